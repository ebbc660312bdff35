"""The time every record is stamped with: timezone-aware UTC."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware (naive datetimes never enter a ledger, lease or manifest)."""
    return datetime.now(timezone.utc)
