"""Extraction: bytes to normalised text, title and date (trafilatura for HTML), hashed.

The document text that is hashed, chunked and embedded is the title (when the body does not
already start with it) followed by the main text, NFC-normalised with whitespace collapsed.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

import apache_beam as beam

from beam_jobs.discover import parse_datetime
from beam_jobs.metrics import count, count_failure, timed
from beam_jobs.types import FAILED, FETCHED, INCOMPLETE, FetchResult, Observation
from model.contracts.chunking import CHUNK_TOKENS
from model.contracts.ids import content_hash, doc_id

LOG = logging.getLogger(__name__)

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_SPACES = re.compile(r"[^\S\n]+")
_WESTERN = ("cp1252", "latin_1", "iso8859_15")
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
JSONL_ESCAPE_FACTOR = 6  # JSON spells one UTF-8 byte in at most 6 ("\u00e9" for the 2 bytes of é)


class ExtractionError(ValueError):
    """A body that cannot become document text; ``reason`` is the counted failure reason."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


def normalise(text: str) -> str:
    """NFC, no zero-width characters, whitespace collapsed within lines, at most one blank line."""
    text = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()


def looks_binary(body: bytes) -> bool:
    """True for bytes that are not text in any encoding we read (NULs, many control bytes)."""
    head = body[:8192]
    if not head:
        return False
    if b"\x00" in head:
        return True
    control = sum(1 for b in head if b < 9 or 13 < b < 32)
    return control / len(head) > 0.05


def decode(body: bytes, charset: str | None, *, html: bool) -> str:
    """Decode a body: declared charset, then <meta charset>, then UTF-8, then a detector.

    Args:
        body: raw bytes.
        charset: the Content-Type charset, if any.
        html: look for a <meta charset> declaration too.

    Returns:
        The text (undecodable bytes replaced only as the last resort).
    """
    candidates = [charset] if charset else []
    if html:
        match = _META_CHARSET.search(body[:4096])
        if match:
            candidates.append(match.group(1).decode("ascii", errors="ignore"))
    candidates.append("utf-8")
    for candidate in candidates:
        try:
            return body.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode(detect_encoding(body), errors="replace")


def detect_encoding(body: bytes) -> str:
    """The most likely encoding of undeclared, non-UTF-8 bytes (charset_normalizer; cp1252 if none fits)."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(body))
    if not matches:
        return "cp1252"
    # Short texts often fit several single-byte code pages equally well; among the least
    # chaotic guesses prefer windows-1252, the web's default for unlabelled Western text.
    least = min(m.chaos for m in matches)
    tied = [m for m in matches if m.chaos <= least + 1e-9]
    return next((m for m in tied if m.encoding in _WESTERN), tied[0]).encoding


def jsonl_encoding(body: bytes, charset: str | None) -> str:
    """The one encoding a .jsonl file's lines are decoded with, each line on its own.

    The declared charset if there is a known one; else UTF-8 (what JSON Lines are) whenever any
    non-ASCII line is valid UTF-8, so a few bad bytes fail their own lines and nothing else;
    only a file none of whose non-ASCII lines is UTF-8 is taken to be in a legacy encoding
    (detected once, from the whole file).
    """
    if charset:
        try:
            return codecs.lookup(charset).name
        except LookupError:
            pass
    try:
        body.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    for line in body.split(b"\n"):
        if not line.isascii():
            try:
                line.decode("utf-8")
                return "utf-8"
            except UnicodeDecodeError:
                continue
    return detect_encoding(body)


@dataclass(frozen=True)
class Extracted:
    """Text, title and date of one document."""

    text: str
    title: str | None
    published_at: datetime | None


def extract_html(body: bytes, charset: str | None, url: str) -> Extracted:
    """Main text, title and date of an HTML page with trafilatura.

    Raises:
        ExtractionError: binary content (``binary``) or no main text (``no_text``).
    """
    import trafilatura

    if looks_binary(body):
        raise ExtractionError("binary", f"{url}: bytes are not text")
    html = decode(body, charset, html=True)
    document = trafilatura.bare_extraction(
        html, url=url, with_metadata=True, include_comments=False, include_tables=True, favor_recall=True
    )
    text = normalise(document.text or "") if document is not None else ""
    if not text:
        raise ExtractionError("no_text", f"{url}: no main text found")
    title = normalise(document.title) if document.title else None
    return Extracted(text, title or None, parse_datetime(document.date))


def extract_plain(body: bytes, charset: str | None, *, markdown: bool) -> Extracted:
    """Text or Markdown as it is; a Markdown file's first heading is its title."""
    if looks_binary(body):
        raise ExtractionError("binary")
    text = normalise(decode(body, charset, html=False))
    if not text:
        raise ExtractionError("no_text")
    title = None
    if markdown:
        heading = re.search(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)
        title = heading.group(1).strip() if heading else None
    return Extracted(text, title, None)


def document_text(extracted: Extracted) -> str:
    """What is hashed and chunked: the title, then the body unless it already starts with it."""
    if extracted.title and not extracted.text.lstrip("# ").startswith(extracted.title):  # '# Title' in Markdown
        return f"{extracted.title}\n\n{extracted.text}"
    return extracted.text


@dataclass(frozen=True)
class SizeLimit:
    """Refuses a document's text over ``max_bytes`` UTF-8 bytes or ``max_chunks`` chunks.

    Args:
        max_bytes: see :class:`beam_jobs.sources.DocumentLimits`.
        max_chunks: see there.
        count_tokens: the model tokenizer's token count of a text; None checks bytes only.
    """

    max_bytes: int
    max_chunks: int
    count_tokens: Callable[[str], int] | None = None

    def refusal(self, text: str) -> str | None:
        """Why the text is too large, or None."""
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            return f"{size} bytes of text, over documents.max_bytes={self.max_bytes}"
        # Every token stands for at least one byte: a text this short cannot have too many chunks.
        if self.count_tokens is not None and size > self.max_chunks * CHUNK_TOKENS:
            chunks = -(-self.count_tokens(text) // CHUNK_TOKENS)
            if chunks > self.max_chunks:
                return f"{chunks} chunks, over documents.max_chunks={self.max_chunks}"
        return None


def observe(result: FetchResult, errors: list[ExtractionError] | None = None, limit: SizeLimit | None = None) -> Iterator[Observation]:
    """The observations one FetchResult yields: one per document (a .jsonl file yields many).

    Args:
        result: a crawl or file-read outcome.
        errors: where .jsonl records that name no document are reported (and skipped);
            None raises on the first one.
        limit: documents over it become FAILED ``too_large`` observations (kept, not chunked).

    Yields:
        Observations; a failed extraction becomes a FAILED observation with its reason.

    Raises:
        ExtractionError: a bad .jsonl record or file, when ``errors`` is None.
    """
    key = doc_id(result.url)
    base = Observation(
        doc_id=key, url=result.url, source=result.source, outcome=result.outcome, reason=result.reason,
        title=result.title, etag=result.etag, last_modified=result.last_modified,
        published_at=result.published_at, fetched_at=result.fetched_at,
    )  # fmt: skip
    if result.outcome != FETCHED:
        yield base
        return
    if result.kind == "jsonl":
        for observation in _observe_jsonl(result, base, errors, limit):
            yield _within(observation, limit)
        return
    try:
        if result.kind == "html":
            extracted = extract_html(result.body or b"", result.charset, result.final_url or result.url)
        else:
            extracted = extract_plain(result.body or b"", result.charset, markdown=result.kind == "markdown")
    except ExtractionError as exc:
        yield Observation(**{**base.__dict__, "outcome": FAILED, "reason": exc.reason})
        return
    text = document_text(extracted)
    yield _within(Observation(**{
        **base.__dict__,
        "title": extracted.title or result.title,
        "text": text,
        "content_hash": content_hash(text),
        "published_at": result.published_at or extracted.published_at,
    }), limit)  # fmt: skip


def _within(observation: Observation, limit: SizeLimit | None) -> Observation:
    """The observation, or a FAILED ``too_large`` one without its text when it breaks the limit."""
    if limit is None or observation.outcome != FETCHED or observation.text is None:
        return observation
    why = limit.refusal(observation.text)
    if why is None:
        return observation
    LOG.warning("document %s is too large (%s); keeping the stored version", observation.url, why)
    return Observation(**{**observation.__dict__, "outcome": FAILED, "reason": "too_large", "text": None, "content_hash": None})


def _observe_jsonl(result: FetchResult, base: Observation, errors: list[ExtractionError] | None, limit: SizeLimit | None) -> Iterator[Observation]:
    """One document per line: {"id" or "url", "text", optional "title", "published_at"}."""

    def bad(error: ExtractionError) -> None:
        if errors is None:
            raise error
        errors.append(error)

    body = result.body or b""
    if looks_binary(body):
        bad(ExtractionError("binary", f"{result.url}: not a text file"))
        return
    encoding = jsonl_encoding(body, result.charset)
    # Line by line, on the bytes: one bad byte fails its own line, never its neighbours' text.
    for number, raw in enumerate(body.split(b"\n"), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8) and encoding == "utf-8":
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        if limit is not None and len(raw) > JSONL_ESCAPE_FACTOR * limit.max_bytes:
            # Not even parsed: no escaping makes this many bytes a text under the limit.
            bad(ExtractionError("too_large", f"{result.url}:{number}: a {len(raw)}-byte record, over documents.max_bytes={limit.max_bytes}"))
            continue
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            bad(ExtractionError("bad_encoding", f"{result.url}:{number}: not {encoding} at byte {exc.start} ({raw[exc.start : exc.start + 1]!r}); JSON Lines are UTF-8"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(ExtractionError("bad_record", f"{result.url}:{number}: not JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            bad(ExtractionError("bad_record", f"{result.url}:{number}: needs a string 'text'"))
            continue
        ident, url = record.get("id"), record.get("url")
        if not isinstance(url, str) and not isinstance(ident, (str, int)):
            bad(ExtractionError("bad_record", f"{result.url}:{number}: needs an 'id' or a 'url'"))
            continue
        # A record's identity: its URL, or its id within this source (stable across file moves).
        identity = url if isinstance(url, str) else f"{result.source}:{ident}"
        title = record.get("title") if isinstance(record.get("title"), str) else None
        text = normalise(record["text"])
        if not text:
            yield Observation(**{**base.__dict__, "doc_id": doc_id(identity), "url": url or f"{result.url}#{ident}", "outcome": FAILED, "reason": "no_text"})
            continue
        text = document_text(Extracted(text, normalise(title) if title else None, None))
        published = parse_datetime(record.get("published_at")) if isinstance(record.get("published_at"), str) else None
        yield Observation(**{
            **base.__dict__,
            "doc_id": doc_id(identity),
            "url": url if isinstance(url, str) else f"{result.url}#{ident}",
            "title": title,
            "text": text,
            "content_hash": content_hash(text),
            "published_at": published or result.published_at,
        })  # fmt: skip


class ExtractDoFn(beam.DoFn):
    """FetchResult -> Observations; bad .jsonl records are counted and mark their source incomplete.

    Args:
        max_bytes: per-document text limit (``documents.max_bytes``); None: no limit.
        max_chunks: per-document chunk limit (``documents.max_chunks``).
        tokenizer_json: the model tokenizer's ``tokenizer.json`` text, to count chunks exactly;
            None checks bytes only.
    """

    def __init__(self, max_bytes: int | None = None, max_chunks: int | None = None, tokenizer_json: str | None = None):
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.tokenizer_json = tokenizer_json
        self._limit: SizeLimit | None = None

    def setup(self) -> None:
        if self.max_bytes is None:
            return
        count_tokens = None
        if self.tokenizer_json is not None:
            from model.contracts.tokenizer import RetroTokenizer

            tokenizer = RetroTokenizer.from_json(self.tokenizer_json, name="size-limit")
            count_tokens = lambda text: len(tokenizer.encode(text))  # noqa: E731
        self._limit = SizeLimit(self.max_bytes, self.max_chunks or self.max_bytes, count_tokens)

    def process(self, result: FetchResult) -> Iterator:
        errors: list[ExtractionError] = []
        try:
            with timed("extract"):
                produced = list(observe(result, errors, self._limit))
        except Exception:  # a parser bug on hostile input must not stop the job
            LOG.exception("extraction crashed on %s", result.url)
            if result.kind == "jsonl":  # its records are unknown: count once, mark the source
                errors.append(ExtractionError("extract_error"))
                produced = []
            else:
                produced = [Observation(doc_id=doc_id(result.url), url=result.url, source=result.source, outcome=FAILED, reason="extract_error")]
        for error in errors:
            LOG.warning("extraction failed: %s", error)
            count_failure(error.reason)
        if errors:
            # Records we could not read may be documents we know: delete none of this source's.
            yield beam.pvalue.TaggedOutput(INCOMPLETE, result.source)
        for observation in produced:
            if result.outcome == FETCHED and observation.outcome == FAILED:
                count_failure(observation.reason or "extract_error")
            elif result.outcome == FETCHED:
                count("extracted")
            yield observation


class Extract(beam.PTransform):
    """What a Crawl read -> Observations, and every source whose documents must not be deleted.

    Args:
        documents: the per-document limits (``SourcesConfig.documents``).
        tokenizer_json: the model tokenizer's ``tokenizer.json`` text (to count chunks exactly).

    Returns:
        ``{"observations": Observations, "incomplete": distinct source names}``: the input's
        incomplete sources plus those with a record that could not be extracted.

    Example::

        documents = (ledger_rows | Crawl(config)) | "Extract" >> Extract(config.documents, tokenizer_json)
    """

    def __init__(self, documents, tokenizer_json: str | None = None):
        super().__init__()
        self.documents = documents
        self.tokenizer_json = tokenizer_json

    def expand(self, fetched: dict):
        extracted = fetched["results"] | "ExtractText" >> beam.ParDo(
            ExtractDoFn(self.documents.max_bytes, self.documents.max_chunks, self.tokenizer_json)
        ).with_outputs(INCOMPLETE, main="observations")
        incomplete = (
            (fetched["incomplete"], extracted[INCOMPLETE])
            | "AllIncomplete" >> beam.Flatten()
            | "IncompleteSources" >> beam.Distinct()
        )
        return {"observations": extracted.observations, "incomplete": incomplete}
