"""The watch on signals that do not behave: a malformed sitemap entry, and a sitemap far beyond
``max_pages``."""

from __future__ import annotations

import pytest
import yaml

from beam_jobs.sources import load_sources
from flows.common.pending import PendingChanges
from flows.watch import Watcher
from model.store import open_store
from tests.fixtures.site import FAST_FETCH
from tests.fixtures.static_site import StaticSite, html_page, sitemap

pytestmark = pytest.mark.integration

def text(name: str) -> str:
    return f"The page {name} tells of the harbour, the market and the weather in plain prose. " * 3


def write_sources(path, base_url: str, **site) -> str:
    sources = [{"kind": "site", "name": "site", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"], **site}]
    path.write_text(yaml.safe_dump({"fetch": FAST_FETCH, "sources": sources}))
    return str(path)


def crawl_and_publish(sources: str, store: str) -> None:
    from beam_jobs.ingest import run_ingest

    result = run_ingest(sources, store)
    open_store(store).publish(result.version, expected_current=open_store(store).current())


def test_a_malformed_sitemap_entry_costs_only_itself(tmp_path):
    pages = {"/sitemap.xml": sitemap([("/a.html", None), ("http://[::1", None), ("/b.html", None)])}
    with StaticSite(pages) as site:
        watcher = Watcher(load_sources(write_sources(tmp_path / "sources.yaml", site.base_url)), str(tmp_path / "store"), announce=lambda a: None)
        try:
            (found,) = watcher.poll()
        finally:
            watcher.close()
    assert found.urls == (site.base_url + "/a.html", site.base_url + "/b.html")
    assert watcher.state["site"].failures == 0


def test_the_watch_announces_no_more_new_pages_than_max_pages(tmp_path):
    listed = [(f"/p{i}.html", None) for i in range(40)]
    pages = {"/": html_page("Home", text("home")), "/sitemap.xml": sitemap(listed[:4])}
    pages |= {path: html_page(path, text(path)) for path, _ in listed}
    with StaticSite(pages) as site:
        sources = write_sources(tmp_path / "sources.yaml", site.base_url, max_pages=5, follow_links=False)
        store = str(tmp_path / "store")
        empty = Watcher(load_sources(sources), str(tmp_path / "empty"), announce=lambda a: None)
        site.pages["/sitemap.xml"] = sitemap(listed)
        try:
            (first,) = empty.poll()
        finally:
            empty.close()
        assert len(first.urls) == 5  # an empty store: the first 5 pages the sitemap lists
        site.pages["/sitemap.xml"] = sitemap(listed[:4])
        crawl_and_publish(sources, store)  # the home page and 4 pages: the site is full
        site.pages["/sitemap.xml"] = sitemap(listed[::-1])
        watcher = Watcher(load_sources(sources), store, announce=lambda a: None)
        try:
            assert watcher.poll() == []  # 36 new pages listed, none announced
        finally:
            watcher.close()
    assert PendingChanges(open_store(store).backend).entries() == []
