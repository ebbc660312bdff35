"""Record dataclasses passed between the ingest job's stages: the contract between transforms."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

# Outcomes of fetching one resource (FetchResult.outcome).
FETCHED = "fetched"  # 200 with a body within limits
NOT_MODIFIED = "not_modified"  # 304, or skipped because the sitemap lastmod is not newer
ROBOTS_BLOCKED = "robots_blocked"  # robots.txt disallows it: never requested
GONE = "gone"  # 404 or 410: the document was removed
FAILED = "failed"  # anything else; `reason` says what (timeout, too_large, ...)

# Outcomes of comparing one document with the parent ledger (see beam_jobs.diff).
NEW = "new"
CHANGED = "changed"
UNCHANGED = "unchanged"
DELETED = "deleted"

# Tagged output of listing, reading and extraction: names of files sources whose listing is not
# authoritative this run (some file or record could not be read), so none of their documents is
# deleted for being absent.
INCOMPLETE = "incomplete"


@dataclass(frozen=True)
class KnownDoc:
    """What the parent version's ledger says about one document; drives conditional requests."""

    doc_id: str
    url: str
    source: str
    etag: str | None = None
    last_modified: str | None = None  # the Last-Modified header as received, sent back verbatim
    published_at: datetime | None = None


@dataclass(frozen=True)
class Seed:
    """A URL to request, with whatever its listing (sitemap, feed, link) said about it."""

    url: str
    source: str
    depth: int = 0
    lastmod: datetime | None = None  # sitemap <lastmod>: when the site says it last changed
    published_at: datetime | None = None  # feed entry date
    title: str | None = None


@dataclass(frozen=True)
class FetchResult:
    """One request's outcome: a body to extract, or a counted reason why there is none.

    ``url`` is the URL that was asked for (the document's identity); ``final_url`` is where
    redirects ended. ``kind`` tells extraction how to read the body: html, text, markdown, jsonl.
    """

    url: str
    source: str
    outcome: str
    reason: str | None = None
    status: int | None = None
    final_url: str | None = None
    kind: str = "html"
    content_type: str | None = None
    charset: str | None = None
    body: bytes | None = field(default=None, repr=False)
    etag: str | None = None
    last_modified: str | None = None  # Last-Modified header verbatim (files: their mtime as one)
    published_at: datetime | None = None
    fetched_at: datetime | None = None
    title: str | None = None  # from the listing (feed entry title), used when the page has none

    def with_outcome(self, outcome: str, reason: str | None = None) -> "FetchResult":
        return replace(self, outcome=outcome, reason=reason, body=None)


@dataclass(frozen=True)
class Observation:
    """What this run learned about one document, ready to be compared with the ledger.

    ``outcome`` is a fetch outcome; only FETCHED observations carry ``text``: the normalised
    extracted text (title first) whose sha256 is ``content_hash``.
    """

    doc_id: str
    url: str
    source: str
    outcome: str
    reason: str | None = None
    title: str | None = None
    text: str | None = field(default=None, repr=False)
    content_hash: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    published_at: datetime | None = None
    fetched_at: datetime | None = None


@dataclass(frozen=True)
class LedgerRow:
    """One row of a version's ledger (``model.store.LEDGER_SCHEMA``)."""

    doc_id: str
    url: str
    source: str
    title: str | None
    etag: str | None
    last_modified: str | None  # the HTTP header as received
    content_hash: str
    published_at: datetime | None
    fetched_at: datetime | None
    first_seen: datetime | None
    chunk_ids: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "url": self.url,
            "source": self.source,
            "title": self.title,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "content_hash": self.content_hash,
            "published_at": self.published_at,
            "fetched_at": self.fetched_at,
            "first_seen": self.first_seen,
            "chunk_ids": list(self.chunk_ids),
        }

    @classmethod
    def from_dict(cls, row: dict) -> "LedgerRow":
        return cls(
            doc_id=row["doc_id"],
            url=row["url"],
            source=row["source"],
            title=row.get("title"),
            etag=row.get("etag"),
            last_modified=row.get("last_modified"),
            content_hash=row["content_hash"],
            published_at=row.get("published_at"),
            fetched_at=row.get("fetched_at"),
            first_seen=row.get("first_seen"),
            chunk_ids=tuple(int(c) for c in (row.get("chunk_ids") or ())),
        )

    def known(self) -> KnownDoc:
        return KnownDoc(
            doc_id=self.doc_id,
            url=self.url,
            source=self.source,
            etag=self.etag,
            last_modified=self.last_modified,
            published_at=self.published_at,
        )


@dataclass(frozen=True)
class ToChunk:
    """A new or changed document on its way to the chunker, with the ledger fields it keeps."""

    observation: Observation
    first_seen: datetime
    outcome: str  # NEW or CHANGED
    old: "LedgerRow | None" = None  # a changed document's parent row: kept if it cannot be chunked
