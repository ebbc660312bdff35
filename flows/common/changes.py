"""When did the sources last change? The newest change among a version's new and changed documents.

A document's change time is what its source says (``published_at``: sitemap lastmod, feed date,
page metadata; else the ``Last-Modified`` header); only when no changed document carries either
does it fall back to when it was fetched, and the result says which basis it used.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

LOG = logging.getLogger(__name__)


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def changed_rows(new_ledger: list[dict], old_ledger: list[dict]) -> list[dict]:
    """Rows of the new ledger whose document is new or whose content hash changed."""
    old = {row["doc_id"]: row.get("content_hash") for row in old_ledger}
    return [row for row in new_ledger if row["doc_id"] not in old or old[row["doc_id"]] != row.get("content_hash")]


def newest_change(rows: list[dict]) -> tuple[datetime | None, str]:
    """The newest source change among ledger rows, and its basis.

    Returns:
        (time or None when there are no rows, "published" | "fetched" | "none").
    """
    stated = [t for row in rows if (t := _aware(row.get("published_at")) or _http_date(row.get("last_modified")))]
    if stated:
        return max(stated), "published"
    fetched = [t for row in rows if (t := _aware(row.get("fetched_at")))]
    if fetched:
        return max(fetched), "fetched"
    return None, "none"


def newest_source_change(store, version: str, parent: str | None) -> tuple[datetime | None, str]:
    """The newest change among documents that ``version`` added or changed relative to ``parent``.

    Args:
        store: the :class:`model.store.Store`.
        version: the new version.
        parent: the version it replaces (None: every document is new).

    Returns:
        As :func:`newest_change`.
    """
    columns = ["doc_id", "content_hash", "published_at", "last_modified", "fetched_at"]
    new = store.read_ledger(version).select(columns).to_pylist()
    old = store.read_ledger(parent).select(["doc_id", "content_hash"]).to_pylist() if parent else []
    return newest_change(changed_rows(new, old))
