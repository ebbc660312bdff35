"""Targeted ingest: which configured source each named URL belongs to, and how to fetch only those.

A change event names URLs; nothing else decides what a targeted run requests. Events come from
outside (webhooks, ``retrofresh notify``), so a URL is fetched only when it belongs to a configured
source, and the test is strict: the same origin (scheme, host and port) as the site's start URLs,
sitemaps or ``allowed_hosts`` (default ports), the feed's own origin, or a path that a files
source's glob matches. Anything else is refused, logged and counted, and never requested: an event
cannot make the job reach an address the sources file does not already name.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.crawl import ReadFileDoFn, count_fetch, fetch_known, source_fetcher
from beam_jobs.fetch import Fetcher
from beam_jobs.limits import Admission
from beam_jobs.metrics import timed
from beam_jobs.sources import FeedSource, FetchSettings, FilesSource, SiteSource, SourcesConfig
from beam_jobs.types import GONE, INCOMPLETE, FetchResult, KnownDoc
from model.contracts.clock import utcnow
from model.contracts.ids import canonical_url, web_url

LOG = logging.getLogger(__name__)

DEFAULT_MAX_TARGETS = 1000  # URLs one targeted run fetches at most; the rest wait for the next run


@dataclass(frozen=True)
class Targets:
    """The URLs of one targeted run, by source name, and the ones refused (url, why)."""

    by_source: dict[str, tuple[str, ...]] = field(default_factory=dict)
    refused: tuple[tuple[str, str], ...] = ()
    deferred: tuple[str, ...] = ()  # accepted but over the run's limit: left for the next run

    @property
    def count(self) -> int:
        return sum(len(urls) for urls in self.by_source.values())


def _origin(url: str) -> tuple[str, str, int] | None:
    url = web_url(url)  # an event's URL is untrusted text: a malformed one has no origin
    if url is None:
        return None
    parts = urlsplit(url)
    return parts.scheme, parts.hostname.lower(), parts.port or {"http": 80, "https": 443}[parts.scheme]


def _site_origins(source: SiteSource) -> set[tuple[str, str, int]]:
    origins = {_origin(u) for u in [*source.start_urls, *(source.sitemaps or [])]}
    for host in source.allowed_hosts or ():
        origins |= {("http", host.lower(), 80), ("https", host.lower(), 443)}
    return {o for o in origins if o is not None}


def _file_path(url: str) -> str | None:
    """A local path or gs:// URI from an event's URL (file:// accepted), normalised; None if odd."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if url.startswith("gs://"):
        bucket_and_key = url[len("gs://"):]
        if ".." in bucket_and_key.split("/"):
            return None
        return url
    if not url.startswith("/") or "\x00" in url:
        return None
    return url if posixpath.normpath(url) == url else None  # no "..", "//" or "/./" tricks


def source_of(config: SourcesConfig, url: str) -> tuple[str | None, str]:
    """The configured source a URL belongs to (the first in file order), or None and why not.

    Args:
        config: the sources file.
        url: a URL or path from a change event.

    Returns:
        (source name, canonical URL) or (None, the reason it is refused).
    """
    origin = _origin(url)
    if origin is not None:
        canonical = canonical_url(url)
        for source in config.sources:
            if isinstance(source, SiteSource) and origin in _site_origins(source):
                return source.name, canonical
            if isinstance(source, FeedSource) and origin == _origin(source.url):
                return source.name, canonical
        return None, "not within any configured site or feed (scheme, host and port must match one)"
    path = _file_path(url)
    if path is None:
        if url.partition(":")[0].lower() in ("http", "https"):  # meant as a URL, but web_url could not parse it
            return None, ("not a well-formed http(s) URL: it needs a host, a bracketed host must be a whole IPv6 address "
                          "and a port a number up to 65535")
        return None, "neither an http(s) URL nor an absolute, normalised file path"
    for source in config.sources:
        if isinstance(source, FilesSource) and source.holds(path):
            return source.name, path
    return None, "no files source's glob matches it"


def resolve_targets(config: SourcesConfig, urls: Iterable[str], *, max_targets: int = DEFAULT_MAX_TARGETS,
                    held: dict[str, set[str]] | None = None) -> Targets:
    """Sort an event's URLs into their sources; refuse strangers; keep at most ``max_targets``.

    Duplicates (after canonicalisation) count once. Refused URLs are logged here, once each.

    Args:
        config: the sources file.
        urls: the event's URLs and paths.
        max_targets: most URLs taken; the rest are ``deferred``.
        held: doc ids each source holds in the parent version: then a source's limits apply
            (:class:`beam_jobs.limits.Admission`), and a new URL of a site already holding
            ``max_pages`` documents is refused, as the crawl would not take it either.
    """
    stored = frozenset().union(*held.values()) if held else frozenset()
    admissions = {s.name: Admission.of(s, held.get(s.name, ()), stored) for s in config.sources} if held is not None else {}
    by_source: dict[str, list[str]] = {}
    refused: list[tuple[str, str]] = []
    deferred: list[str] = []
    seen: set[str] = set()
    accepted = 0
    for url in urls:
        if not isinstance(url, str) or not url.strip():
            refused.append((repr(url), "not a URL"))
            continue
        name, key = source_of(config, url.strip())
        if name is None:
            LOG.warning("refused %r from a change event: %s", url, key)
            refused.append((url, key))
            continue
        if key in seen:
            continue
        seen.add(key)
        if accepted >= max_targets:
            deferred.append(key)
            continue
        if name in admissions and not admissions[name].admit(key):
            refused.append((url, admissions[name].reason))
            continue
        accepted += 1
        by_source.setdefault(name, []).append(key)
    for admission in admissions.values():
        admission.report("named URLs")
    return Targets({name: tuple(found) for name, found in by_source.items()}, tuple(refused), tuple(deferred))


def fetch_targets(source: SiteSource | FeedSource, urls: Iterable[str], settings: FetchSettings,
                  known: dict[str, KnownDoc], fetcher: Fetcher | None = None) -> Iterator[FetchResult]:
    """Fetch the named pages of one web source, conditionally (the parent ledger's validators).

    One fetcher per source, so its robots.txt rules, per-host pacing and address guard hold as in
    a full crawl; no links are followed and no sitemap is read.
    """
    with source_fetcher(source, settings, fetcher) as fetcher:
        for url in urls:
            with timed("fetch"):
                result = fetch_known(fetcher, url, source.name, known)
            yield result


def known_by_source(row) -> tuple:
    """A parent ledger row as (its source, what a conditional fetch of it needs): the side input's pairs."""
    return row.source, row.known()


class FetchTargetsDoFn(beam.DoFn):
    """(web source, its named URLs) -> FetchResults; the parent ledger arrives as a side input."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings

    def process(self, element, known) -> Iterator[FetchResult]:
        source, urls = element
        docs = {doc.doc_id: doc for doc in known[source.name]}
        for result in fetch_targets(source, urls, self.settings, docs):
            count_fetch(result)
            yield result


class StatTargetFilesDoFn(beam.DoFn):
    """(files source, a named path) -> the (source, path, size, mtime) ReadFiles expects, or GONE.

    A named file that no longer exists is a removal (GONE), so the document is deleted; one that
    cannot be looked up is a failure and keeps what the store had.
    """

    def process(self, element) -> Iterator:
        source, path = element
        try:
            matches = FileSystems.match([path])[0].metadata_list
        except Exception as exc:  # BeamIOError when nothing matches; auth and network errors alike
            if not FileSystems.exists(path):
                result = FetchResult(url=path, source=source.name, outcome=GONE, status=404, fetched_at=utcnow())
            else:
                LOG.error("files source %s: cannot look up %s: %s", source.name, path, exc)
                result = FetchResult(url=path, source=source.name, outcome="failed", reason="io_error", fetched_at=utcnow())
            count_fetch(result)
            yield beam.pvalue.TaggedOutput("results", result)
            return
        for meta in matches:
            if meta.path == path:
                yield (source, meta.path, meta.size_in_bytes, meta.last_updated_in_seconds)
                return
        result = FetchResult(url=path, source=source.name, outcome=GONE, status=404, fetched_at=utcnow())
        count_fetch(result)
        yield beam.pvalue.TaggedOutput("results", result)


class FetchTargets(beam.PTransform):
    """A targeted run's reads: the parent ledger's rows -> FetchResults of only the named URLs.

    One element per web source (for its pacing) fetches that source's named URLs; named files
    are looked up and read. Every configured source counts as incomplete, so a document that was
    not named is kept as it is, never deleted for being absent.

    Args:
        config: the run's sources and fetch settings.
        targets: the accepted URLs by source (:func:`resolve_targets`).

    Returns:
        ``{"results": FetchResults, "incomplete": every source's name}``, as :class:`beam_jobs.crawl.Crawl`.
    """

    def __init__(self, config: SourcesConfig, targets: Targets):
        super().__init__()
        self.config = config
        self.targets = targets

    def expand(self, ledger):
        config, pipeline = self.config, ledger.pipeline
        by_source = [(config.source(name), urls) for name, urls in self.targets.by_source.items()]
        web = [(source, urls) for source, urls in by_source if source.kind != "files"]
        paths = [(source, path) for source, urls in by_source if source.kind == "files" for path in urls]
        known = ledger | "KnownBySource" >> beam.Map(known_by_source)
        crawled = (
            pipeline
            | "TargetSources" >> beam.Create(web, reshuffle=False)
            | "FetchTargets" >> beam.ParDo(FetchTargetsDoFn(config.fetch), known=beam.pvalue.AsMultiMap(known))
        )
        stat = (
            pipeline
            | "TargetFiles" >> beam.Create(paths, reshuffle=False)
            | "StatFiles" >> beam.ParDo(StatTargetFilesDoFn()).with_outputs("results", main="files")
        )
        read = stat.files | "ReadFiles" >> beam.ParDo(ReadFileDoFn()).with_outputs(INCOMPLETE, main="results")
        everything = pipeline | "AllSourcesIncomplete" >> beam.Create(list(config.names), reshuffle=False)
        return {
            "results": (crawled, stat.results, read.results) | "AllFetched" >> beam.Flatten(),
            "incomplete": (everything, read[INCOMPLETE]) | "AllIncomplete" >> beam.Flatten(),
        }
