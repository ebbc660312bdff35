"""Changed URLs waiting for a targeted refresh, kept in the store so none is lost to a crash.

Each change event's URLs become one create-only object ``pending/<time>-<random>.json`` before the
refresh that handles them takes the lease. The lease holder takes whole entries, oldest first, up
to its limit, and deletes them only after their changes are published (or turned out to change
nothing). A refresh that crashes leaves its entries in place, so the next targeted refresh takes
them again; a change that arrives while a refresh runs is a new entry, taken by the next pass.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from model.contracts.clock import utcnow

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingEntry:
    """One recorded batch of changed URLs."""

    key: str
    urls: tuple[str, ...]
    origin: str = ""
    recorded_at: str = ""


@dataclass(frozen=True)
class PendingBatch:
    """What one refresh pass takes: whole entries, and their URLs in order, each once."""

    entries: tuple[PendingEntry, ...] = ()
    urls: tuple[str, ...] = field(default=())

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]


class PendingChanges:
    """The ``pending/`` entries of one store (a :class:`model.store.backends.Backend`)."""

    def __init__(self, backend):
        self.backend = backend

    def add(self, urls, *, origin: str = "") -> str | None:
        """Record one batch of URLs; returns its key (None for an empty batch)."""
        from model.store.layout import new_pending_key

        urls = [str(url) for url in urls or () if str(url).strip()]
        if not urls:
            return None
        key = new_pending_key()
        record = {"urls": urls, "origin": origin, "recorded_at": utcnow().isoformat()}
        self.backend.put_bytes(key, json.dumps(record).encode())
        return key

    def entries(self) -> list[PendingEntry]:
        """Every entry, oldest first. An unreadable one is logged and left for a person to look at."""
        from model.store.layout import PENDING

        found = []
        for info in sorted(self.backend.list(PENDING), key=lambda i: i.key):
            if not info.key.endswith(".json"):
                continue
            try:
                record = json.loads(self.backend.read_bytes(info.key))
                urls = tuple(str(u) for u in record["urls"])
            except FileNotFoundError:
                continue  # taken and deleted by another pass meanwhile
            except (ValueError, KeyError, TypeError) as error:
                LOG.error("pending entry %s is unreadable and skipped: %s", info.key, error)
                continue
            found.append(PendingEntry(info.key, urls, str(record.get("origin", "")), str(record.get("recorded_at", ""))))
        return found

    def take(self, limit: int) -> PendingBatch:
        """Whole entries, oldest first, until ``limit`` distinct URLs are reached (at least one entry)."""
        entries, urls, seen = [], [], set()
        for entry in self.entries():
            fresh = [u for u in entry.urls if u not in seen]
            if entries and len(urls) + len(fresh) > limit:
                break
            entries.append(entry)
            seen.update(fresh)
            urls.extend(fresh)
        return PendingBatch(tuple(entries), tuple(urls))

    def remove(self, keys) -> int:
        """Delete handled entries; returns how many were still there."""
        return sum(1 for key in keys if self.backend.delete(key))
