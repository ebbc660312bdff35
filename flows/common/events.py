"""The ``retrofresh.source.changed`` Prefect event: what the watch, ``retrofresh notify`` and the
webhook emit, and what the ``refresh-changed`` deployment's trigger expects.

One event carries at most :data:`MAX_URLS_PER_EVENT` URLs (a feed that lists hundreds of changed
items becomes several events), so no event nears Prefect's event size limit and no targeted
refresh is asked for an unbounded batch at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

LOG = logging.getLogger(__name__)

SOURCE_CHANGED = "retrofresh.source.changed"
MAX_URLS_PER_EVENT = 200


def batches(urls: list[str], size: int = MAX_URLS_PER_EVENT) -> list[list[str]]:
    """``urls`` in order, each once, cut into lists of at most ``size``."""
    unique = list(dict.fromkeys(urls))
    return [unique[i : i + size] for i in range(0, len(unique), size)]


def emit_changes(urls: list[str], *, source: str, origin: str, store: str | None = None, detected_at: datetime | None = None) -> list:
    """Emit one ``retrofresh.source.changed`` event per batch of changed URLs.

    Args:
        urls: changed URLs (or files); repeats are dropped.
        source: the configured source they belong to, or "push" when a caller named them.
        origin: who noticed ("watch", "notify", "webhook"), for the UI and logs.
        store: the store the change is for (a related resource, so triggers can filter on it).
        detected_at: when the change was noticed (default: now).

    Returns:
        The emitted events (empty when Prefect has no API to send them to: nothing emitted).
    """
    from prefect.events import emit_event

    when = detected_at or datetime.now(timezone.utc)
    events = []
    for batch in batches(urls):
        related = [{"prefect.resource.id": f"retrofresh.store.{store}", "prefect.resource.role": "store"}] if store else None
        event = emit_event(
            event=SOURCE_CHANGED,
            resource={"prefect.resource.id": f"retrofresh.source.{source}", "prefect.resource.name": source},
            related=related,
            occurred=when,
            payload={"urls": batch, "source": source, "origin": origin, "detected_at": when.isoformat()},
        )
        if event is None:
            LOG.warning("no Prefect API to send %s to (set PREFECT_API_URL): %d URLs not announced", SOURCE_CHANGED, len(batch))
        else:
            events.append(event)
    return events


def flush_events(timeout_s: float = 10.0) -> None:
    """Wait until emitted events have left this process (a short-lived CLI call exits right after)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout_s)
