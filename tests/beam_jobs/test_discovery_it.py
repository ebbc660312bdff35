"""Discovery through real pipeline runs: malformed URLs cost only themselves, and a site's
``max_pages`` bounds what the store holds whichever path (crawl, targeted run) brings pages in."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from beam_jobs.ingest import run_ingest
from beam_jobs.sources import SourcesConfig
from model.store import open_store
from tests.fixtures.site import FAST_FETCH
from tests.fixtures.static_site import Page, StaticSite, html_page, sitemap

pytestmark = pytest.mark.integration

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
BAD = "http://[::1"  # urllib: ValueError('Invalid IPv6 URL')


def site_config(base_url: str, **site) -> SourcesConfig:
    source = {"kind": "site", "name": "site", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"], **site}
    return SourcesConfig.model_validate({"fetch": FAST_FETCH, "sources": [source]})


def text(i: int) -> str:
    return f"Page number {i} describes harbour number {i}, its market and its weather in plain prose. " * 3


def documents(store_uri: str) -> set[str]:
    store = open_store(store_uri)
    return {row["url"] for row in store.read_ledger(store.current()).to_pylist()}


def publish(result, store_uri: str) -> None:
    store = open_store(store_uri)
    store.publish(result.version, expected_current=store.current())


def test_malformed_urls_in_robots_sitemap_links_and_redirects_are_dropped_and_counted(tmp_path):
    pages = {
        "/robots.txt": Page(f"User-agent: *\nAllow: /\nSitemap: {BAD}/sitemap.xml\n", "text/plain"),
        "/sitemap.xml": sitemap([("/a.html", None), (BAD, None), ("http://127.0.0.1:99999/x", None), ("/b.html", None)]),
        "/": html_page("Home", text(0), links=("/c.html", "/moved")),
        "/a.html": html_page("A", text(1)),
        "/b.html": html_page("B", text(2)),
        "/c.html": html_page("C", text(3), links=("d.html",), head=f'<base href="{BAD}">'),
        "/d.html": html_page("D", text(4)),
        "/moved": Page(status=301, headers={"Location": "http://127.0.0.1:99999/x"}),  # (httpx itself refuses BAD here)
    }
    with StaticSite(pages) as site:
        result = run_ingest(site_config(site.base_url), str(tmp_path / "store"))
    base = site.base_url
    publish(result, str(tmp_path / "store"))
    assert documents(str(tmp_path / "store")) == {f"{base}{p}" for p in ("/", "/a.html", "/b.html", "/c.html", "/d.html")}
    # robots.txt's Sitemap line, two sitemap entries and the <base>: each dropped, each counted
    assert result.metrics["malformed_urls"] == 4
    assert result.metrics["failed_bad_url"] == 1  # the redirect to a malformed Location


def test_a_site_never_holds_more_than_max_pages_by_crawl_or_by_targeted_run(tmp_path):
    store_uri = str(tmp_path / "store")
    first = [(f"/p{i}.html", None) for i in range(6)]
    later = [(f"/q{i}.html", None) for i in range(30)]
    pages = {"/": html_page("Home", text(100)), "/sitemap.xml": sitemap(first)}
    pages |= {path: html_page(path, text(i)) for i, (path, _) in enumerate(first + later)}
    with StaticSite(pages) as site:
        config = site_config(site.base_url, max_pages=5, follow_links=False)
        publish(run_ingest(config, store_uri), store_uri)
        assert len(documents(store_uri)) == 5  # the home page and 4 sitemap pages
        # The sitemap now leads with 30 new pages: a full crawl re-checks what it holds, adds none
        site.pages["/sitemap.xml"] = sitemap(later + first)
        again = run_ingest(config, store_uri)
        assert again.version is None and again.metrics["over_max_pages"] == 30 + 2
        assert len(documents(store_uri)) == 5
        # A change event naming them all: the same limit, and the held pages are still taken
        held = sorted(documents(store_uri))
        named = [site.base_url + path for path, _ in later] + held
        targeted = run_ingest(config, store_uri, urls=named)
        refused = {url for url, _ in targeted.refused}
        assert refused == {site.base_url + path for path, _ in later}
        assert all("max_pages: 5" in why for _, why in targeted.refused)
        assert not any(site.requested(path) for path, _ in later)  # never fetched
        assert targeted.version is None and len(documents(store_uri)) == 5
