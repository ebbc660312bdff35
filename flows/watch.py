"""The watch: poll each source's cheap change signal and announce what changed, without a crawl.

Per source, every ``interval_s``:

- a site: its sitemaps (conditional GET: an unchanged sitemap is one 304, and its parsed listing is
  reused), each URL's ``lastmod`` against the ``Last-Modified`` the published ledger holds for it;
  a URL the ledger lacks is new (taken within the site's ``max_pages``, as the crawl takes it:
  :class:`beam_jobs.limits.Admission`), one that left the sitemap since the last poll is
  re-checked (it may be gone);
- a feed: its entries, each entry's date against the ledger's ``published_at``; new links are new;
- files: the glob's listing (Beam filesystems: local mtime, or a GCS object's update time, which
  every new generation moves), against the ledger's ``Last-Modified``; vanished files are re-checked.

Changed URLs are recorded as pending entries in the store (:mod:`flows.common.pending`, durable: a
lost event loses no change), then announced as ``retrofresh.source.changed`` events
(:mod:`flows.common.events`), one batch per source and poll. The watch keeps one memory per
document across sources: the change signal each source last announced for it. A signal is announced
once. It is announced again only while the URL is still pending ``reannounce_after_s`` later (the
refresh it asked for failed or never ran); once a refresh took it, a URL that still looks changed
(a ``lastmod`` in the future, a feed date the page does not carry, a page that failed to fetch)
waits for its signal to change, and the scheduled full crawl retries what failed. A document's
memory ends when no source reports it changed any more (a site and a feed listing one page do not
clear each other's). A source that cannot be polled backs off exponentially (up to
``max_backoff_s``) while the others keep their pace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from beam_jobs.discover import MAX_SITEMAP_BYTES, parse_feed, parse_sitemap, sitemap_roots, walk_sitemaps
from beam_jobs.fetch import Fetcher, parse_http_date
from beam_jobs.limits import Admission, held_by_source
from beam_jobs.sources import FeedSource, FilesSource, SiteSource, SourcesConfig
from beam_jobs.types import FETCHED, NOT_MODIFIED
from flows.common.pending import PendingChanges
from model.contracts.clock import as_utc, utcnow
from model.contracts.ids import doc_id

LOG = logging.getLogger(__name__)


class SourceDown(RuntimeError):
    """A source's change signal (sitemap, feed, listing) could not be read this poll."""


@dataclass
class KnownState:
    """What the published version holds per document: its Last-Modified and published_at."""

    version: str | None = None
    last_modified: dict[str, datetime | None] = field(default_factory=dict)  # doc_id -> Last-Modified
    published_at: dict[str, datetime | None] = field(default_factory=dict)
    held: dict[str, set[str]] = field(default_factory=dict)  # source name -> its doc ids


@dataclass
class SourceWatch:
    """The watch's memory of one source between polls."""

    failures: int = 0
    next_poll: float = 0.0
    listed: set[str] = field(default_factory=set)  # URLs the last successful poll listed
    changed: set[str] = field(default_factory=set)  # doc ids the last successful poll reported changed
    etags: dict[str, str] = field(default_factory=dict)  # sitemap/feed URL -> ETag
    parsed: dict[str, object] = field(default_factory=dict)  # sitemap/feed URL -> its last parsed body (for 304s)
    sitemaps: list[str] | None = None  # discovered once
    walked: dict = field(default_factory=dict)  # sitemap URL -> (parsed, its entries on the site's hosts)
    ids: dict[str, str] = field(default_factory=dict)  # listed URL -> doc_id (hashing 100k URLs a poll is not free)
    over_cap: int = 0  # new URLs the last poll left out for max_pages (logged when it changes)


@dataclass
class Announced:
    """What the watch last announced for one document, whichever sources list it."""

    url: str
    stamps: dict[str, datetime | None] = field(default_factory=dict)  # source -> the signal it announced
    at: float = 0.0  # clock() of the last announcement


@dataclass(frozen=True)
class Announcement:
    """One batch of changed URLs of one source, as announced."""

    source: str
    urls: tuple[str, ...]
    detected_at: datetime


class Watcher:
    """Polls the sources of one sources file for one store.

    Args:
        config: the sources.
        store_uri: the store whose ``CURRENT`` ledger says what is already known; changed URLs
            are recorded in its ``pending/`` entries before they are announced.
        interval_s: seconds between two polls of a healthy source.
        max_backoff_s: the longest wait before polling a failing source again.
        reannounce_after_s: announce a URL again when it is still pending this long after.
        announce: called with each :class:`Announcement` (default: emit the Prefect event).
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        config: SourcesConfig,
        store_uri: str,
        *,
        interval_s: float = 2.0,
        max_backoff_s: float = 300.0,
        reannounce_after_s: float = 120.0,
        announce: Callable[[Announcement], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        from model.store import open_store

        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.config = config
        self.store = open_store(store_uri)
        self.store_uri = store_uri
        self.pending = PendingChanges(self.store.backend)
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.reannounce_after_s = reannounce_after_s
        self.announce = announce or self._emit
        self.clock = clock
        self.known = KnownState()
        self.state = {source.name: SourceWatch() for source in config.sources}
        self.announced: dict[str, Announced] = {}  # doc_id -> what was announced for it
        # The watch asks once per poll and must not stall on one source: no retries, short timeouts.
        fetch = config.fetch.model_copy(update={"retries": 0, "timeout_s": min(config.fetch.timeout_s, 5.0),
                                                "deadline_s": min(config.fetch.deadline_s, 15.0)})
        self.fetchers = {
            s.name: Fetcher(fetch, policy=s.address_policy, crawl_delay_s=0.0)
            for s in config.sources if isinstance(s, (SiteSource, FeedSource))
        }

    def close(self) -> None:
        for fetcher in self.fetchers.values():
            fetcher.close()

    # ------------------------------------------------------------------ the loop

    def poll(self) -> list[Announcement]:
        """Poll every source that is due; record, announce and return what changed."""
        self._refresh_known()
        now = self.clock()
        found = []
        for source in self.config.sources:
            watch = self.state[source.name]
            if now < watch.next_poll:
                continue
            try:
                urls = self._changed(source, watch)
            except Exception as error:  # noqa: BLE001 - one source's failure (or a bug met on its input) stops only it
                watch.failures += 1
                delay = min(self.max_backoff_s, self.interval_s * 2 ** watch.failures)
                watch.next_poll = now + delay
                LOG.warning("source %s is down (%s); next try in %.0f s", source.name, error, delay,
                            exc_info=not isinstance(error, SourceDown))
                continue
            if watch.failures:
                LOG.info("source %s is back after %d failed polls", source.name, watch.failures)
            watch.failures, watch.next_poll = 0, now + self.interval_s
            watch.changed = {doc_id(url) for url, _ in urls}
            fresh, again = self._to_announce(source.name, urls, now)
            if fresh:
                self.pending.add(fresh, origin=f"watch ({source.name})")  # durable before it is announced
            if fresh or again:
                announcement = Announcement(source.name, tuple(fresh + again), utcnow())
                self.announce(announcement)
                found.append(announcement)
        self._forget()
        return found

    def run(self, *, max_polls: int | None = None, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Poll until ``should_stop()`` or ``max_polls`` polls; sleeps until the next source is due."""
        polls = 0
        while not should_stop() and (max_polls is None or polls < max_polls):
            self.poll()
            polls += 1
            due = min(w.next_poll for w in self.state.values())
            time.sleep(max(0.05, min(self.interval_s, due - self.clock())))

    def _emit(self, announcement: Announcement) -> None:
        from flows.common.events import emit_changes

        LOG.info("source %s: %d changed URLs", announcement.source, len(announcement.urls))
        emit_changes(list(announcement.urls), source=announcement.source, origin="watch", store=self.store_uri,
                     detected_at=announcement.detected_at)

    def _to_announce(self, source: str, urls: list[tuple[str, datetime | None]], now: float) -> tuple[list[str], list[str]]:
        """(URLs with a signal not announced before, URLs announced before and still pending since)."""
        fresh, due = [], []
        for url, stamp in urls:
            memo = self.announced.setdefault(doc_id(url), Announced(url))
            if source in memo.stamps and memo.stamps[source] == stamp:
                if now - memo.at >= self.reannounce_after_s:
                    due.append(memo)
                continue
            memo.stamps[source], memo.at = stamp, now
            fresh.append(url)
        again = []
        if due:
            pending = {doc_id(u) for entry in self.pending.entries() for u in entry.urls}
            for memo in due:
                if doc_id(memo.url) in pending:  # its refresh has not run (or failed): ask again
                    memo.at = now
                    again.append(memo.url)
                else:  # a refresh took it and it still looks changed: wait for a new signal
                    memo.at = float("inf")
        return fresh, again

    def _forget(self) -> None:
        """End the memory of documents no source reports changed any more (published, or gone)."""
        reported = set().union(*(watch.changed for watch in self.state.values()))
        for key in [k for k in self.announced if k not in reported]:
            del self.announced[key]

    def _refresh_known(self) -> None:
        """Re-read the published ledger when CURRENT moved (once per version)."""
        current = self.store.current()
        if current == self.known.version:
            return
        known = KnownState(current)
        if current is not None and self.store.manifest(current).ledger is not None:
            table = self.store.read_ledger(current).select(["doc_id", "source", "last_modified", "published_at"])
            for row in table.select(["doc_id", "last_modified", "published_at"]).to_pylist():
                known.last_modified[row["doc_id"]] = parse_http_date(row["last_modified"])
                known.published_at[row["doc_id"]] = as_utc(row["published_at"])
            known.held = held_by_source(table)
        self.known = known

    # ------------------------------------------------------------------ per source kind

    def _changed(self, source, watch: SourceWatch) -> list[tuple[str, datetime | None]]:
        """(URL, its listing's stamp) for every URL of the source that CURRENT does not hold as listed."""
        if isinstance(source, SiteSource):
            listed = self._site_listing(source, watch)
            marks = self.known.last_modified
        elif isinstance(source, FeedSource):
            listed = self._feed_listing(source, watch)
            marks = self.known.published_at
        else:
            listed = self._files_listing(source)
            marks = self.known.last_modified
        admission = Admission.of(source, self.known.held.get(source.name, ()), marks.keys())
        changed = []
        ids = {url: watch.ids.get(url) or doc_id(url) for url in listed}
        watch.ids = ids
        for url, stamp in listed.items():
            key = ids[url]
            if key not in marks:
                if admission.admit(url, key):
                    changed.append((url, stamp))  # new to the store, and within the source's limits
            elif stamp is not None and marks[key] is not None and stamp > marks[key]:
                changed.append((url, stamp))
        if admission.refused != watch.over_cap:
            watch.over_cap = admission.refused
            admission.report("new URLs")
        vanished = [(u, None) for u in sorted(watch.listed - set(listed)) if doc_id(u) in marks]
        watch.listed = set(listed)
        return changed + vanished

    def _read(self, source, watch: SourceWatch, url: str, parse: Callable[[bytes, str], object]):
        """A sitemap or feed, fetched conditionally and parsed; its last parse again on 304."""
        result = self.fetchers[source.name].fetch(url, source=source.name, etag=watch.etags.get(url) if url in watch.parsed else None,
                                                  accept=None, max_bytes=MAX_SITEMAP_BYTES)
        if result.outcome == NOT_MODIFIED and url in watch.parsed:
            return watch.parsed[url]
        if result.outcome != FETCHED:
            raise SourceDown(f"{url}: {result.outcome} {result.reason or result.status or ''}".strip())
        parsed = parse(result.body or b"", result.final_url or url)
        watch.etags.pop(url, None)
        if result.etag:
            watch.etags[url] = result.etag
        watch.parsed[url] = parsed
        return parsed

    def _site_listing(self, source: SiteSource, watch: SourceWatch) -> dict[str, datetime | None]:
        if not source.use_sitemaps:
            return {}
        if watch.sitemaps is None:
            watch.sitemaps = sitemap_roots(source, self.fetchers[source.name].sitemaps)
        return walk_sitemaps(watch.sitemaps, lambda url: self._read(source, watch, url, parse_sitemap), source.hosts, watch.walked)

    def _feed_listing(self, source: FeedSource, watch: SourceWatch) -> dict[str, datetime | None]:
        entries = self._read(source, watch, source.url, parse_feed)[: source.max_entries]
        return {entry.link: entry.published_at for entry in entries}

    def _files_listing(self, source: FilesSource) -> dict[str, datetime | None]:
        try:
            matches = source.listing()
        except Exception as error:  # BeamIOError, auth and network errors: the listing is unknown
            raise SourceDown(f"cannot list {source.glob}: {error}") from error
        # Ledgers keep file times as HTTP dates (whole seconds): compare at that resolution.
        return {m.path: datetime.fromtimestamp(int(m.last_updated_in_seconds), timezone.utc) if m.last_updated_in_seconds else None
                for m in matches}


class LocalRefresher:
    """Runs :func:`flows.refresh_changed.refresh_changed` in this process whenever changes come in.

    The alternative to announcing events to a served deployment: a long-lived process (``retrofresh
    watch --refresh-here``) keeps Beam, torch and the encoder loaded, so a targeted refresh pays no
    process start, no imports and no model load. Changes are recorded as pending entries at once
    (durable) and one worker thread refreshes them, one run at a time; whatever arrives during a
    run is taken by the next. A failed run is logged and retried after ``retry_after_s``: its
    entries stay pending.

    Args:
        sources: the sources file.
        store_uri: the store.
        servers: servers to tell about new versions (None: ``RETROFRESH_SERVERS``).
        retry_after_s: wait after a failed run before trying again.
        flow_kwargs: more parameters of ``refresh_changed``.
    """

    def __init__(self, sources: str, store_uri: str, *, servers: list[str] | None = None, retry_after_s: float = 5.0, **flow_kwargs):
        import threading

        from flows.common.pending import PendingChanges
        from model.store import open_store

        self.sources, self.store_uri, self.servers = str(sources), store_uri, servers
        self.retry_after_s = retry_after_s
        self.flow_kwargs = flow_kwargs
        self.pending = PendingChanges(open_store(store_uri).backend)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="refresh-here", daemon=True)
        self._running = False  # a refresh is in progress
        self.runs: list[dict] = []  # what each run returned (or the error), newest last

    def submit(self, urls, *, origin: str) -> None:
        """Record changed URLs and wake the worker."""
        if self.pending.add(list(urls), origin=origin):
            self._wake.set()

    def announce(self, announcement: Announcement) -> None:
        """A :class:`Watcher` ``announce`` callback: the watcher recorded the URLs already, so only wake."""
        self._wake.set()

    def start(self) -> "LocalRefresher":
        if self.pending.entries():
            self._wake.set()  # left by an earlier process that stopped or crashed
        self._thread.start()
        return self

    def wait_idle(self, timeout: float = 600.0) -> bool:
        """Wait until nothing is pending and no run is due or running; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._wake.is_set() and not self._running and not self.pending.entries():
                return True
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        from flows.refresh_changed import refresh_changed

        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._running = True  # before the wake is cleared, so wait_idle never sees neither
            self._wake.clear()
            try:
                self.runs.append(refresh_changed(sources=self.sources, store=self.store_uri, servers=self.servers, **self.flow_kwargs))
            except Exception as error:  # noqa: BLE001 - keep watching; the entries stay pending
                LOG.error("targeted refresh failed (its changes stay pending; retrying in %.0f s): %s", self.retry_after_s, error)
                self.runs.append({"error": repr(error)})
                self._wake.set()
                self._running = False
                self._stop.wait(self.retry_after_s)
            finally:
                self._running = False
