"""Crawling: turn one configured source into FetchResults (site, feed) or file reads (files).

A site is crawled by one worker, sequentially, so the per-host delay holds without any
coordination: seeds are the start URLs, the sitemap entries and every URL the parent ledger knows
for the source (so removed pages are re-requested and come back 404/410); links are followed
breadth-first within the allowed hosts, ``max_depth`` and ``max_pages`` (at most that many pages a
run, and new pages only while the site holds fewer documents: :class:`beam_jobs.limits.Admission`).
Files sources are listed on one worker and read in parallel.
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import urlsplit

import apache_beam as beam

from beam_jobs.discover import MAX_SITEMAP_BYTES, extract_links, file_kind, parse_feed, parse_sitemap, sitemap_roots, walk_sitemaps
from beam_jobs.fetch import Fetcher, format_http_date, parse_http_date
from beam_jobs.filestat import read_unchanged
from beam_jobs.limits import Admission
from beam_jobs.metrics import count, count_failure
from beam_jobs.sources import FeedSource, FetchSettings, FilesSource, SiteSource, SourcesConfig
from beam_jobs.types import FAILED, FETCHED, INCOMPLETE, NOT_MODIFIED, FetchResult, KnownDoc, Seed
from model.contracts.clock import utcnow
from model.contracts.ids import doc_id

LOG = logging.getLogger(__name__)

def count_fetch(result: FetchResult) -> None:
    """Count one crawl outcome under the job's counter names."""
    if result.outcome == FAILED:
        count_failure(result.reason or "unknown")
    else:
        count(result.outcome)
        if result.reason == "sitemap_lastmod":
            count("lastmod_skipped")


@contextmanager
def source_fetcher(source: SiteSource | FeedSource, settings: FetchSettings, fetcher: Fetcher | None = None) -> Iterator[Fetcher]:
    """The Fetcher for one web source's run, its requests and retries counted when the run ends.

    Args:
        source: the site or feed (its address policy and crawl delay).
        settings: the run's fetch policy.
        fetcher: an open Fetcher to use (tests); one is made here, and closed at the end, otherwise.
    """
    own = fetcher is None
    fetcher = fetcher or Fetcher(settings, policy=source.address_policy, crawl_delay_s=source.crawl_delay_s)
    try:
        yield fetcher
    finally:
        count("requests", fetcher.requests)
        count("retries", fetcher.retries)
        if own:
            fetcher.close()


def fetch_known(fetcher: Fetcher, url: str, source: str, known: dict[str, KnownDoc]) -> FetchResult:
    """GET ``url`` conditionally: with the ETag and Last-Modified the parent ledger stored for it, if any."""
    previous = known.get(doc_id(url))
    return fetcher.fetch(url, source=source, etag=previous.etag if previous else None,
                         last_modified=previous.last_modified if previous else None)


def crawl_site(source: SiteSource, settings: FetchSettings, known: dict[str, KnownDoc], fetcher: Fetcher | None = None) -> Iterator[FetchResult]:
    """Crawl one site politely.

    Args:
        source: the site's configuration.
        settings: the run's fetch policy.
        known: the parent ledger's documents of this source, by doc_id.
        fetcher: an open Fetcher to use (tests); one is made and closed otherwise.

    Yields:
        One FetchResult per page considered (at most ``max_pages``).
    """
    with source_fetcher(source, settings, fetcher) as fetcher:
        yield from _crawl_site(source, fetcher, known)


def _crawl_site(source: SiteSource, fetcher: Fetcher, known: dict[str, KnownDoc]) -> Iterator[FetchResult]:
    hosts = source.hosts
    lastmods = site_listing(source, fetcher) if source.use_sitemaps else {}
    admission = Admission.of(source, held=known)
    queue: deque[Seed] = deque()
    queued: set[str] = set()

    def enqueue(url: str, depth: int) -> None:
        key = doc_id(url)
        if key in queued or (urlsplit(url).hostname or "").lower() not in hosts or not admission.admit(url):
            return
        queued.add(key)
        queue.append(Seed(url=url, source=source.name, depth=depth, lastmod=lastmods.get(url)))

    for url in source.start_urls:
        enqueue(url, 0)
    for url in lastmods:
        enqueue(url, 0)
    for doc in sorted(known.values(), key=lambda d: d.url):
        enqueue(doc.url, source.max_depth)  # re-check only: its links were followed when it was new
    pages = 0
    while queue and pages < source.max_pages:
        seed = queue.popleft()
        pages += 1
        previous = known.get(doc_id(seed.url))
        if (
            previous is not None
            and source.trust_sitemap_lastmod
            and seed.lastmod is not None
            and _not_newer(seed.lastmod, previous.last_modified)
        ):
            # The site says the page has not changed since we stored it: no request at all.
            yield FetchResult(
                url=seed.url, source=source.name, outcome=NOT_MODIFIED, reason="sitemap_lastmod",
                etag=previous.etag, last_modified=previous.last_modified,
            )  # fmt: skip
            continue
        result = fetch_known(fetcher, seed.url, source.name, known)
        if result.outcome == FETCHED:
            result = replace(result, published_at=seed.lastmod)
            if source.follow_links and seed.depth < source.max_depth and result.kind == "html":
                for link in extract_links(result.body or b"", result.final_url or seed.url):
                    enqueue(link, seed.depth + 1)
        yield result
    admission.report("new pages")
    if queue:
        count("max_pages_reached")
        LOG.warning("site %s: stopped at max_pages=%d with %d URLs left", source.name, source.max_pages, len(queue))


def _not_newer(lastmod: datetime, last_modified: str | None) -> bool:
    """Whether a sitemap lastmod is no later than the Last-Modified we stored for the page."""
    stored = parse_http_date(last_modified)
    return stored is not None and lastmod <= stored


def site_listing(source: SiteSource, fetcher: Fetcher) -> dict[str, datetime | None]:
    """The pages a site's sitemaps list on its hosts, with their lastmod (a sitemap that fails is skipped)."""

    def read(url: str):
        result = fetcher.fetch(url, source=source.name, accept=None, max_bytes=MAX_SITEMAP_BYTES)
        if result.outcome != FETCHED:
            count("sitemap_failed")
            LOG.warning("sitemap %s: %s %s", url, result.outcome, result.reason or "")
            return None
        return parse_sitemap(result.body or b"", result.final_url or url)

    return walk_sitemaps(sitemap_roots(source, fetcher.sitemaps), read, source.hosts)


def crawl_feed(source: FeedSource, settings: FetchSettings, known: dict[str, KnownDoc], fetcher: Fetcher | None = None) -> Iterator[FetchResult]:
    """Fetch a feed and the document behind each entry (at most ``max_entries``).

    Args:
        source: the feed's configuration.
        settings: the run's fetch policy.
        known: the parent ledger's documents of this source, by doc_id (validators).
        fetcher: an open Fetcher to use (tests); one is made and closed otherwise.

    Yields:
        One FetchResult per entry; none when the feed itself cannot be read (its documents
        are then kept as they were).
    """
    with source_fetcher(source, settings, fetcher) as fetcher:
        feed = fetcher.fetch(source.url, source=source.name, accept=None, max_bytes=MAX_SITEMAP_BYTES)
        if feed.outcome != FETCHED:
            count("feed_failed")
            LOG.warning("feed %s: %s %s", source.url, feed.outcome, feed.reason or "")
            return
        seen: set[str] = set()
        for entry in parse_feed(feed.body or b"", feed.final_url or source.url)[: source.max_entries]:
            key = doc_id(entry.link)
            if key in seen:
                continue
            seen.add(key)
            result = fetch_known(fetcher, entry.link, source.name, known)
            yield replace(result, published_at=entry.published_at, title=entry.title)


class CrawlDoFn(beam.DoFn):
    """Crawls one site or feed source; the parent ledger's documents arrive as a side input."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings

    def process(self, source, known) -> Iterator[FetchResult]:
        docs = {doc.doc_id: doc for doc in known[source.name]}  # a MultiMap: [] for unknown keys
        crawl = crawl_site if isinstance(source, SiteSource) else crawl_feed
        try:
            for result in crawl(source, self.settings, docs):
                count_fetch(result)
                yield result
        except Exception:  # noqa: BLE001 - a bug met on one site's input must not fail every source's refresh
            # What was yielded stands; a web source's documents not seen this run are kept, never deleted.
            LOG.exception("crawl of %s stopped early; its documents not reached this run are kept", source.name)
            count_failure("crawl_error")


class ListFilesDoFn(beam.DoFn):
    """Expands a files source's glob into (source, path, size, mtime) with Beam's filesystems.

    A glob that cannot be listed marks the source incomplete, so none of its documents is
    deleted this run.
    """

    def process(self, source: FilesSource) -> Iterator:
        try:
            matches = source.listing()
        except Exception as exc:  # BeamIOError, auth and network errors all mean "unknown listing"
            LOG.error("files source %s: cannot list %s: %s", source.name, source.glob, exc)
            count_failure("listing")
            yield beam.pvalue.TaggedOutput(INCOMPLETE, source.name)
            return
        count("files_listed", len(matches))
        for meta in matches:
            yield (source, meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)


class ReadFileDoFn(beam.DoFn):
    """Reads one listed file into a FETCHED FetchResult (or a counted failure)."""

    def process(self, element) -> Iterator:
        source, path, size, mtime = element
        modified = datetime.fromtimestamp(mtime, timezone.utc) if mtime else None
        base = FetchResult(
            url=path, source=source.name, outcome=FAILED, final_url=path,
            last_modified=format_http_date(modified) if modified else None, published_at=modified, fetched_at=utcnow(),
        )  # fmt: skip
        kind = file_kind(path)
        if kind is None:
            result = base.with_outcome(FAILED, "unsupported_file")
        elif size is not None and size > source.max_file_bytes:
            result = base.with_outcome(FAILED, "too_large")
        else:
            # Re-stat after reading: a file rewritten while read is skipped, never half-read.
            body, why = read_unchanged(path, size=size, mtime=mtime, max_bytes=source.max_file_bytes)
            if body is None:
                result = base.with_outcome(FAILED, why)
            elif len(body) > source.max_file_bytes:
                result = base.with_outcome(FAILED, "too_large")
            else:
                result = replace(base, outcome=FETCHED, kind=kind, body=body)
        count_fetch(result)
        if result.outcome == FAILED and kind == "jsonl":
            # An unread .jsonl file may hold documents we know under ids we cannot see now:
            # delete none of this source's documents this run. (A failed single-document file
            # needs no such care: its failure is observed under its own doc_id and it is kept.)
            yield beam.pvalue.TaggedOutput(INCOMPLETE, source.name)
        yield result


class Crawl(beam.PTransform):
    """A full run's reads: the parent ledger's rows -> every source's FetchResults.

    Each site and feed is crawled by one worker (its pacing needs no coordination), with the
    parent's documents of that source as conditional-request validators and removal probes;
    each files source is listed on one worker and its files read in parallel.

    Args:
        config: the run's sources and fetch settings.

    Returns:
        ``{"results": FetchResults, "incomplete": names of files sources whose listing or
        reading failed in part}``.

    Example::

        fetched = ledger_rows | "Crawl" >> Crawl(config)
    """

    def __init__(self, config: SourcesConfig):
        super().__init__()
        self.config = config

    def expand(self, ledger):
        web = [s for s in self.config.sources if s.kind in ("site", "feed")]
        files = [s for s in self.config.sources if s.kind == "files"]
        known = ledger | "KnownBySource" >> beam.Map(lambda row: (row.source, row.known()))
        crawled = (
            ledger.pipeline
            | "WebSources" >> beam.Create(web, reshuffle=False)
            | "SpreadSources" >> beam.Reshuffle()
            | "CrawlWeb" >> beam.ParDo(CrawlDoFn(self.config.fetch), known=beam.pvalue.AsMultiMap(known))
        )
        listed = (
            ledger.pipeline
            | "FileSources" >> beam.Create(files, reshuffle=False)
            | "ListFiles" >> beam.ParDo(ListFilesDoFn()).with_outputs(INCOMPLETE, main="files")
        )
        read = (
            listed.files
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles" >> beam.ParDo(ReadFileDoFn()).with_outputs(INCOMPLETE, main="results")
        )
        return {
            "results": (crawled, read.results) | "AllFetched" >> beam.Flatten(),
            "incomplete": (listed[INCOMPLETE], read[INCOMPLETE]) | "AllIncomplete" >> beam.Flatten(),
        }
