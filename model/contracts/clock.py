"""The time every record is stamped with: timezone-aware UTC.

Every product module reads the clock through :func:`utcnow` (a test in tests/test_clock.py holds
this), and a datetime that arrives naive (a ledger row, a parsed header) is read as UTC through
:func:`as_utc`.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Now, in UTC, timezone-aware (naive datetimes never enter a ledger, lease or manifest)."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC, aware; a naive one is taken to be UTC already (this project writes no local times)."""
    if value is None:
        return None
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
