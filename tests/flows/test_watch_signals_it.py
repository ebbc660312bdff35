"""The watch on signals that do not behave: a malformed sitemap entry, a ``lastmod`` in the future,
one page listed by a site and a feed with different dates, and a sitemap far beyond ``max_pages``.

The refresh-here tests run the watch with its real :class:`flows.watch.LocalRefresher` (targeted
refreshes as Prefect flow runs) and count the refreshes it asked for.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import yaml

from beam_jobs.sources import load_sources
from flows.common.pending import PendingChanges
from flows.watch import LocalRefresher, Watcher
from model.store import open_store
from tests.fixtures.site import FAST_FETCH
from tests.fixtures.static_site import StaticSite, html_page, rss, sitemap

pytestmark = pytest.mark.integration

OLD = datetime(2024, 1, 2, tzinfo=timezone.utc)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def text(name: str) -> str:
    return f"The page {name} tells of the harbour, the market and the weather in plain prose. " * 3


def write_sources(path, base_url: str, *, feed: bool = False, **site) -> str:
    sources = [{"kind": "site", "name": "site", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"], **site}]
    if feed:
        sources.append({"kind": "feed", "name": "news", "url": base_url + "/feed.xml", "allow_networks": ["127.0.0.0/8"]})
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


def run_watch(watcher: Watcher, refresher: LocalRefresher, clock: Clock, *, polls: int, step_s: float) -> list:
    """Poll ``polls`` times ``step_s`` apart (watch clock), letting each refresh finish; the announcements."""
    announced = []
    watcher.announce = lambda a: (announced.append(a), refresher.announce(a))
    for _ in range(polls):
        watcher.poll()
        assert refresher.wait_idle(180)
        clock.now += step_s
    return announced


@pytest.fixture
def refresh_here(prefect_api):
    started = []

    def start(sources: str, store: str) -> LocalRefresher:
        started.append(LocalRefresher(sources, store, retry_after_s=1.0).start())
        return started[-1]

    yield start
    for refresher in started:
        refresher.stop()


def test_a_lastmod_in_the_future_is_announced_once(tmp_path, refresh_here):
    pages = {"/": html_page("Home", text("home"), last_modified=OLD), "/a.html": html_page("A", text("a"), last_modified=OLD),
             "/sitemap.xml": sitemap([("/a.html", "2099-01-01")])}
    with StaticSite(pages) as site:
        sources, store = write_sources(tmp_path / "sources.yaml", site.base_url), str(tmp_path / "store")
        crawl_and_publish(sources, store)
        clock = Clock()
        watcher = Watcher(load_sources(sources), store, interval_s=1.0, reannounce_after_s=10.0, clock=clock)
        refresher = refresh_here(sources, store)
        try:
            announced = run_watch(watcher, refresher, clock, polls=4, step_s=11.0)
        finally:
            watcher.close()
    assert [a.urls for a in announced] == [(site.base_url + "/a.html",)]
    assert len(refresher.runs) == 1 and "error" not in refresher.runs[0]


def test_a_page_in_a_sitemap_and_a_feed_is_not_refreshed_over_and_over(tmp_path, refresh_here):
    # The feed dates the page later than the sitemap (and its Last-Modified) do: by its own
    # measure the feed sees it changed, the site does not, and neither may undo the other.
    pages = {"/": html_page("Home", text("home"), last_modified=OLD), "/n.html": html_page("News", text("news"), last_modified=OLD),
             "/sitemap.xml": sitemap([("/n.html", "2024-01-02")]),
             "/feed.xml": rss([("/n.html", "Fri, 05 Jan 2024 00:00:00 GMT", "News")])}
    with StaticSite(pages) as site:
        sources = write_sources(tmp_path / "sources.yaml", site.base_url, feed=True)
        store = str(tmp_path / "store")
        crawl_and_publish(sources, store)
        clock = Clock()
        watcher = Watcher(load_sources(sources), store, interval_s=1.0, reannounce_after_s=10.0, clock=clock)
        refresher = refresh_here(sources, store)
        try:
            announced = run_watch(watcher, refresher, clock, polls=4, step_s=1.0)
            announced += run_watch(watcher, refresher, clock, polls=2, step_s=11.0)
        finally:
            watcher.close()
    assert [(a.source, a.urls) for a in announced] == [("news", (site.base_url + "/n.html",))]
    assert len(refresher.runs) == 1
