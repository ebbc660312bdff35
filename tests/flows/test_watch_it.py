"""The watch against real servers: sitemap lastmod against the published ledger, a source that is
down backs off while the others keep going, a huge feed is announced in bounded events."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from beam_jobs.sources import load_sources
from flows.common.events import batches
from flows.watch import Watcher
from tests.flows.support import copy_store, free_port, write_sources

pytestmark = pytest.mark.integration


class Published:
    """A store holding edition 1 of a sample site (ingested and published directly, no Prefect)."""

    def __init__(self, store, sources, site):
        self.store, self.sources, self.site = store, sources, site


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    from beam_jobs.ingest import run_ingest
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from model.store import open_store

    root = tmp_path_factory.mktemp("watched")
    site = SampleSiteServer(SampleWorld(0, 1), 1).start()
    sources = write_sources(root / "sources.yaml", site.base_url)
    result = run_ingest(sources, str(root / "store"))
    open_store(root / "store").publish(result.version, expected_current=None)
    yield Published(root / "store", sources, site)
    site.stop()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def expected_changes(world, base: str, old: int, new: int) -> set[str]:
    """Sitemap URLs of edition ``new`` whose lastmod moved since ``old`` (or that are new), and the ones it dropped."""
    e0, e1 = world.edition(old), world.edition(new)
    listed0 = {p.path: p.lastmod for p in e0.pages.values() if p.in_sitemap and p.is_document}
    listed1 = {p.path: p.lastmod for p in e1.pages.values() if p.in_sitemap and p.is_document}
    moved = {p for p, lastmod in listed1.items() if p not in listed0 or lastmod.date() > listed0[p].date()}
    return {base + p for p in moved | (set(listed0) - set(listed1))}


def test_the_watch_announces_what_changed_since_the_published_version_once(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    site = refreshed.site
    seen = []
    watcher = Watcher(load_sources(refreshed.sources), store, interval_s=1.0, announce=seen.append, clock=Clock())
    try:
        assert watcher.poll() == []  # edition 1 is what the store holds
        site.set_edition(2)
        site.clear_log()
        watcher.clock.now += 1.0
        (found,) = watcher.poll()
        assert found.source == "sample"
        assert set(found.urls) == expected_changes(site.world, site.base_url, 1, 2)
        assert {r.path for r in site.requests} == {"/sitemap.xml"}  # no page is fetched to find out
        watcher.clock.now += 1.5
        assert watcher.poll() == []  # already announced, nothing new
        sitemap = [r for r in site.requests if r.path == "/sitemap.xml"]
        assert sitemap[-1].status == 304  # an unchanged sitemap costs a 304
        watcher.clock.now += watcher.reannounce_after_s + 1
        (again,) = watcher.poll()  # still not published: said again, in case the refresh was lost
        assert again.urls and set(again.urls) <= set(found.urls)
    finally:
        watcher.close()
        site.set_edition(1)


def test_a_source_that_is_down_backs_off_and_the_others_keep_going(refreshed, tmp_path):
    import yaml

    store = copy_store(refreshed.store, tmp_path / "store")
    sources = yaml.safe_load(refreshed.sources.read_text())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sources["sources"].append({"kind": "site", "name": "down", "start_urls": [dead + "/"], "sitemaps": [dead + "/sitemap.xml"], "allow_private": True})
    sources["sources"].append({"kind": "feed", "name": "down-feed", "url": dead + "/feed.xml", "allow_private": True})
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(sources))
    clock, seen = Clock(), []
    watcher = Watcher(load_sources(tmp_path / "sources.yaml"), store, interval_s=1.0, max_backoff_s=8.0, announce=seen.append, clock=clock)
    site = refreshed.site
    try:
        waits = []
        for _ in range(5):
            watcher.poll()
            state = watcher.state["down"]
            waits.append(state.next_poll - clock.now)
            clock.now = state.next_poll  # the next poll that may try it again
        assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped at max_backoff_s
        assert watcher.state["down-feed"].failures == 5
        site.set_edition(2)
        site.clear_log()
        clock.now += 1.0
        found = watcher.poll()
        assert [a.source for a in found] == ["sample"]  # the healthy source still announces
        assert watcher.state["sample"].failures == 0
    finally:
        watcher.close()
        site.set_edition(1)


class FeedServer:
    """An RSS feed of ``n`` fresh items on a loopback port."""

    def __init__(self, n: int):
        items = "".join(f"<item><title>Item {i}</title><link>/items/{i}.html</link><pubDate>Mon, 01 Jan 2024 00:00:00 GMT</pubDate></item>"
                        for i in range(n))
        body = f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{items}</channel></rss>'.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path == "/robots.txt":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed.xml"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_feed_listing_hundreds_of_changed_items_is_announced_in_bounded_events(tmp_path):
    feed = FeedServer(450)
    try:
        (tmp_path / "sources.yaml").write_text(f"sources:\n  - kind: feed\n    name: big\n    url: {feed.url}\n    allow_private: true\n")
        seen = []
        watcher = Watcher(load_sources(tmp_path / "sources.yaml"), str(tmp_path / "store"), announce=seen.append)
        (found,) = watcher.poll()
        watcher.close()
        assert len(found.urls) == 450
    finally:
        feed.close()
    # emit_changes sends one event per batch: at most 200 URLs each, in order, each once
    assert [len(b) for b in batches(list(found.urls))] == [200, 200, 50]
    assert [u for b in batches(list(found.urls)) for u in b] == list(found.urls)
    assert batches(["a", "b", "a", "c"], 2) == [["a", "b"], ["c"]]
