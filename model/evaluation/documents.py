"""Dated evaluation documents from a JSONL file: ``text``, ``published_at``, optional ``id`` and ``url``.

Lines without text or a parseable date are counted per reason, never fatal; a file with no usable
line is an error that says what a line must look like.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from model.contracts.ids import canonical_url, doc_id

LOG = logging.getLogger(__name__)

EXAMPLE_LINE = '{"text": "...", "published_at": "2024-03-01", "id": "optional", "url": "optional"}'
SKIP_REASONS = ("not_json", "no_text", "bad_date")


class DocumentsError(ValueError):
    """The documents file cannot be evaluated; the message says how to fix it."""


@dataclass(frozen=True)
class DatedDocument:
    """One evaluated document and the identities under which the index may hold it."""

    text: str
    published_at: date
    id: str | None = None
    url: str | None = None
    line: int = 0

    @property
    def name(self) -> str:
        return self.url or self.id or f"line {self.line}"

    @property
    def own_doc_ids(self) -> frozenset[str]:
        """Store doc ids this document may have: the hash of its URL or id, or the id itself."""
        ids = set()
        for value in (self.url, self.id):
            if value:
                ids.add(doc_id(value))
        if self.id:
            ids.add(self.id)
        return frozenset(ids)

    @property
    def own_urls(self) -> frozenset[str]:
        return frozenset(canonical_url(v) for v in (self.url, self.id) if v)

    @property
    def month(self) -> str:
        return f"{self.published_at:%Y-%m}"


@dataclass
class DocumentsFile:
    """What :func:`read_dated_documents` found: the usable documents and the skipped lines per reason."""

    path: Path
    documents: list[DatedDocument]
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)  # first few line numbers per reason

    def skip(self, reason: str, line: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < 5:
            lines.append(line)


def parse_date(value) -> date | None:
    """An ISO date or date-time (``2024-03-01``, ``2024-03-01T12:00:00Z``) as a date; None if unparseable."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date()
    except ValueError:
        pass
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def read_dated_documents(path: str | Path) -> DocumentsFile:
    """Read a JSONL file of dated documents.

    Args:
        path: one JSON object per line.

    Returns:
        The documents in file order and the counts of skipped lines.

    Raises:
        DocumentsError: the file is missing, unreadable, not UTF-8, empty, or has no usable line.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DocumentsError(f"--docs {path}: no such file; give a JSONL file with one document a line, e.g. {EXAMPLE_LINE}") from None
    except OSError as exc:
        raise DocumentsError(f"--docs {path}: cannot read it ({exc.strerror or exc}); check the path and its permissions") from None
    try:
        content = raw.decode("utf-8-sig")  # a byte order mark (Windows editors write one) is not part of line 1
    except UnicodeDecodeError as exc:
        raise DocumentsError(f"--docs {path}: not UTF-8 text (byte {exc.start}); write the JSONL file as UTF-8") from None
    result = DocumentsFile(path, [])
    lines = 0
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            result.skip("not_json", number)
            continue
        if not isinstance(record, dict):
            result.skip("not_json", number)
            continue
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            result.skip("no_text", number)
            continue
        published = parse_date(record.get("published_at"))
        if published is None:
            result.skip("bad_date", number)
            continue
        ident = record.get("id")
        url = record.get("url")
        result.documents.append(DatedDocument(text, published, str(ident) if ident not in (None, "") else None,
                                              str(url) if url not in (None, "") else None, number))
    if not lines:
        raise DocumentsError(f"--docs {path}: the file is empty; write one JSON object a line, e.g. {EXAMPLE_LINE}")
    if not result.documents:
        counts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in result.skipped.items() if n)
        raise DocumentsError(
            f"--docs {path}: none of its {lines} lines is usable ({counts}); each line needs a non-empty string "
            f"'text' and an ISO 'published_at' date, e.g. {EXAMPLE_LINE}"
        )
    if any(result.skipped.values()):
        LOG.warning("%s: skipped %s", path, {k: v for k, v in result.skipped.items() if v})
    return result
