"""Discovery: read sitemaps (with lastmod), RSS/Atom feeds, links in pages, and file globs.

Pure functions over bytes; the crawl (:mod:`beam_jobs.crawl`) decides what to request. Parsers
are defensive: malformed input yields fewer URLs, never an exception. Every URL they read goes
through :func:`model.contracts.ids.web_url`; one that is malformed (``http://[::1``, a port out of range) is
dropped, logged and counted (``malformed_urls``).
"""

from __future__ import annotations

import gzip
import io
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable
from urllib.parse import urlsplit

import lxml.etree
import lxml.html

from beam_jobs.metrics import count
from model.contracts.clock import as_utc
from model.contracts.ids import web_url

LOG = logging.getLogger(__name__)

MAX_SITEMAP_BYTES = 50_000_000  # the sitemap protocol's own limit for one uncompressed file
MAX_NESTED_SITEMAPS = 1000  # sitemap files one walk reads at most (an index may nest 50,000)
FILE_KINDS = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class SitemapEntries:
    """What one sitemap file lists: page URLs with their lastmod, and nested sitemaps."""

    urls: list[tuple[str, datetime | None]]
    sitemaps: list[str]


@dataclass(frozen=True)
class FeedEntry:
    """One RSS/Atom entry: the linked document, its date and title."""

    link: str
    published_at: datetime | None
    title: str | None


class _Malformed:
    """Counts the malformed URLs of one document, and says so once."""

    def __init__(self, where: str):
        self.where, self.dropped, self.example = where, 0, None

    def url(self, ref: str | None, base: str | None) -> str | None:
        url = web_url(ref, base) if ref else None
        if url is None and ref:
            self.dropped += 1
            self.example = self.example or ref
        return url

    def report(self) -> None:
        if self.dropped:
            count("malformed_urls", self.dropped)
            LOG.warning("%s: dropped %d malformed URLs (e.g. %r)", self.where, self.dropped, self.example[:200])


def parse_datetime(value: str | None) -> datetime | None:
    """A W3C datetime ('2024-05-01', '2024-05-01T10:00:00+02:00', '...Z') as aware UTC; else None."""
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return as_utc(parsed)


def _maybe_gunzip(body: bytes, limit: int = MAX_SITEMAP_BYTES) -> bytes:
    if not body.startswith(b"\x1f\x8b"):
        return body
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as f:
        data = f.read(limit + 1)  # never inflate a gzip bomb past the limit
    if len(data) > limit:
        raise ValueError(f"sitemap inflates past {limit} bytes")
    return data


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_XML_PARSER = dict(resolve_entities=False, no_network=True, huge_tree=False, recover=True)


def parse_sitemap(body: bytes, base_url: str) -> SitemapEntries:
    """Parse a sitemap or sitemap index (plain or gzipped).

    Args:
        body: the file's bytes.
        base_url: where it came from; relative locations are resolved against it.

    Returns:
        The listed page URLs with lastmod, and nested sitemap URLs; empty when unreadable.
    """
    try:
        root = lxml.etree.fromstring(_maybe_gunzip(body), parser=lxml.etree.XMLParser(**_XML_PARSER))
    except (lxml.etree.XMLSyntaxError, ValueError, OSError, EOFError) as exc:
        LOG.warning("unreadable sitemap %s: %s", base_url, exc)
        return SitemapEntries([], [])
    if root is None:
        return SitemapEntries([], [])
    urls, sitemaps = [], []
    malformed = _Malformed(f"sitemap {base_url}")
    for element in root:
        if not isinstance(element.tag, str):
            continue
        tag = lxml.etree.QName(element).localname
        fields = {lxml.etree.QName(c).localname: (c.text or "").strip() for c in element if isinstance(c.tag, str)}
        loc = malformed.url(fields.get("loc"), base_url)
        if not loc:
            continue
        if tag == "url":
            urls.append((loc, parse_datetime(fields.get("lastmod"))))
        elif tag == "sitemap":
            sitemaps.append(loc)
    malformed.report()
    return SitemapEntries(urls, sitemaps)


def sitemap_roots(source, robots_sitemaps: Callable[[str], list[str]]) -> list[str]:
    """The sitemaps a site names: its configured ones, else robots.txt's, else ``/sitemap.xml``.

    Args:
        source: a :class:`beam_jobs.sources.SiteSource`.
        robots_sitemaps: a start URL -> the Sitemap lines of its origin's robots.txt
            (:meth:`beam_jobs.fetch.Fetcher.sitemaps`).

    Returns:
        Sitemap URLs, each once, in the order found.
    """
    if source.sitemaps is not None:
        return list(source.sitemaps)
    found = []
    for start in source.start_urls:
        parts = urlsplit(start)
        found.extend(robots_sitemaps(start) or [f"{parts.scheme}://{parts.netloc}/sitemap.xml"])
    return list(dict.fromkeys(found))


def walk_sitemaps(roots: Iterable[str], read: Callable[[str], SitemapEntries | None], hosts: Iterable[str],
                  memo: dict | None = None) -> dict[str, datetime | None]:
    """Every page a site's sitemaps list on its hosts, with its lastmod (the last listing wins).

    Args:
        roots: the sitemaps to start from (:func:`sitemap_roots`).
        read: a sitemap URL -> its parsed entries, or None when it cannot be read (skipped); the
            crawl fetches plainly, the watch conditionally.
        hosts: the site's hosts (lower case); entries on other hosts are left out.
        memo: kept between walks by a caller whose ``read`` returns the same entries object for
            an unchanged sitemap (the watch, on a 304): their filtered list is reused, not rebuilt.

    Returns:
        URL -> lastmod, in listing order. Nested sitemaps are read after the ones that list them,
        each once, at most ``MAX_NESTED_SITEMAPS`` files in all.
    """
    hosts = frozenset(hosts)
    pending, seen = list(roots), set()
    listed: dict[str, datetime | None] = {}
    while pending and len(seen) < MAX_NESTED_SITEMAPS:
        url = pending.pop(0)
        if url in seen:
            continue
        seen.add(url)
        entries = read(url)
        if entries is None:
            continue
        pending.extend(entries.sitemaps)
        kept = memo.get(url) if memo is not None else None
        if kept is None or kept[0] is not entries:
            # parse_sitemap let only well-formed URLs through: urlsplit cannot raise here
            kept = (entries, [(loc, lastmod) for loc, lastmod in entries.urls if (urlsplit(loc).hostname or "").lower() in hosts])
            if memo is not None:
                memo[url] = kept
        listed.update(kept[1])
    if memo is not None:
        for url in set(memo) - seen:
            del memo[url]
    return listed


def parse_feed(body: bytes, base_url: str) -> list[FeedEntry]:
    """Entries of an RSS or Atom feed, in feed order.

    Args:
        body: the feed's bytes.
        base_url: where it came from; relative links are resolved against it.

    Returns:
        One FeedEntry per entry that has a link.
    """
    import feedparser

    parsed = feedparser.parse(body, response_headers={"content-location": base_url})
    if parsed.bozo and not parsed.entries:
        LOG.warning("unreadable feed %s: %s", base_url, parsed.get("bozo_exception"))
    entries = []
    malformed = _Malformed(f"feed {base_url}")
    for entry in parsed.entries:
        link = malformed.url(entry.get("link"), base_url)
        if not link:
            continue
        stamp = entry.get("published_parsed") or entry.get("updated_parsed")
        published = datetime(*stamp[:6], tzinfo=timezone.utc) if stamp else None
        entries.append(FeedEntry(link, published, entry.get("title")))
    malformed.report()
    return entries


def extract_links(html: bytes | str, base_url: str) -> list[str]:
    """Absolute http(s) links of <a href> in a page, fragments dropped, in page order, unique.

    Args:
        html: the page.
        base_url: the page's final URL (after redirects); <base href> is honoured.

    Returns:
        The links; empty for a page that is not parseable HTML.
    """
    try:
        document = lxml.html.fromstring(html)
    except (lxml.etree.ParserError, ValueError, TypeError):
        return []
    malformed = _Malformed(f"page {base_url}")
    base = base_url
    for element in document.iter("base"):
        if element.get("href"):
            base = malformed.url(element.get("href"), base_url) or base_url  # a malformed <base>: the page's own URL
            break
    links, seen = [], set()
    for element in document.iter("a"):
        href = (element.get("href") or "").strip()
        scheme = _SCHEME.match(href)
        if not href or href.startswith("#") or (scheme and scheme[1].lower() not in ("http", "https")):
            continue  # mailto:, javascript:, ftp:, ...: not ours to follow, and not malformed either
        url = malformed.url(href, base)
        if url is not None and url not in seen:
            seen.add(url)
            links.append(url)
    malformed.report()
    return links


def file_kind(path: str) -> str | None:
    """html, text, markdown or jsonl from a file name's extension; None when unsupported."""
    name = path.lower()
    for extension, kind in FILE_KINDS.items():
        if name.endswith(extension):
            return kind
    return None
