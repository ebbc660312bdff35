"""Ids: documents by canonical URL, chunks by (doc_id, position, content hash), and how index versions order."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit


def web_url(ref: str, base: str | None = None) -> str | None:
    """A URL from untrusted text, made absolute: or None when it is not a well-formed http(s) URL.

    Every URL read from outside (a sitemap's ``<loc>``, a feed's link, an ``href`` or ``<base>``,
    robots.txt's ``Sitemap:`` lines, a ``Location`` header, a change event) passes through here
    before anything splits, compares or fetches it: ``urllib.parse`` raises ``ValueError`` on a
    bracketed host that is not an IPv6 address (``http://[::1``) or a port that is not a number in
    0-65535, and one such entry must cost only itself, never a crawl.

    Args:
        ref: the URL as written (relative ones are resolved against ``base``).
        base: the URL of the document it was read from (None: ``ref`` must be absolute).

    Returns:
        The absolute URL without its fragment, or None when it is malformed, not http(s), or has
        no host.
    """
    if not isinstance(ref, str):
        return None
    try:
        url = urldefrag(urljoin(base, ref.strip()) if base else ref.strip()).url
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() or not c.isprintable() for c in host):
        return None
    return url


def canonical_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment and a default port; keep path and query.

    Args:
        url: an http(s) URL, a local path, or a ``gs://`` URI.

    Returns:
        The canonical form used to derive :func:`doc_id`; a malformed URL (see :func:`web_url`)
        is its own canonical form, so deriving an id never raises.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            host = (parts.hostname or "").lower()
            default_port = {"http": 80, "https": 443}[parts.scheme]
            netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
            return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    except ValueError:
        pass  # malformed (see web_url): its own canonical form
    return url


def doc_id(url: str) -> str:
    """A document's id: the first 16 hex digits of sha256 of its canonical URL or path."""
    return hashlib.sha256(canonical_url(url).encode("utf-8")).hexdigest()[:16]


def content_hash(text: str) -> str:
    """sha256 hex digest of a document's normalised extracted text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(doc: str, position: int, doc_content_hash: str) -> int:
    """A 63-bit, non-negative chunk id (FAISS ids are int64).

    The same document text always yields the same ids, so re-ingesting unchanged input changes
    nothing; a changed document gets new ids and its old ones become tombstones.
    """
    digest = hashlib.sha256(f"{doc}\x00{position}\x00{doc_content_hash}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# An index version id is ``v{seq:06d}-{random hex}`` (made by model.store.layout.version_id); the
# client orders versions by it too, so the grammar lives here, in a module that imports neither
# faiss nor pyarrow.
_VERSION = re.compile(r"^v(\d{6,})-([0-9a-f]+)$")


def version_seq(version: str) -> int:
    """The sequence number of an index version id; -1 for ids not made by ``version_id``."""
    match = _VERSION.match(version)
    return int(match.group(1)) if match else -1
