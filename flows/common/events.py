"""The ``retrofresh.source.changed`` Prefect event: what the watch, ``retrofresh notify`` and the
webhook emit, and what the ``refresh-changed`` deployment's trigger expects.

One event carries at most :data:`MAX_URLS_PER_EVENT` URLs (a feed that lists hundreds of changed
items becomes several events), so no event nears Prefect's event size limit and no targeted
refresh is asked for an unbounded batch at once.

Two ways to send them. :func:`emit_changes` is Prefect's own fire-and-forget ``emit_event``: a
background worker sends the events and only logs when the API cannot be reached; the watch's poll
loop uses it because it records the URLs as pending in the store first and announces them again
while they stay pending. :func:`deliver_changes`
sends the events itself and returns only once the API has them, raising
:class:`ChangesNotDelivered` otherwise: ``retrofresh notify`` and the webhook use it, because for
them the event is the whole job and their caller must learn that it failed (a non-zero exit, a
503 that a webhook sender retries) rather than read "announced" while nothing will run.
"""

from __future__ import annotations

import logging
from datetime import datetime

from model.contracts.clock import utcnow

LOG = logging.getLogger(__name__)

SOURCE_CHANGED = "retrofresh.source.changed"
MAX_URLS_PER_EVENT = 200


def batches(urls: list[str], size: int = MAX_URLS_PER_EVENT) -> list[list[str]]:
    """``urls`` in order, each once, cut into lists of at most ``size``."""
    unique = list(dict.fromkeys(urls))
    return [unique[i : i + size] for i in range(0, len(unique), size)]


class ChangesNotDelivered(RuntimeError):
    """The Prefect API did not take the change events.

    Attributes:
        urls: the URLs whose events were not delivered (nothing was announced for them).
        delivered: the events the API did take before the failure.
    """

    def __init__(self, message: str, *, urls: list[str], delivered: list):
        self.urls = urls
        self.delivered = delivered
        super().__init__(message)


def _event_fields(batch: list[str], *, source: str, origin: str, store: str | None, when: datetime) -> dict:
    related = [{"prefect.resource.id": f"retrofresh.store.{store}", "prefect.resource.role": "store"}] if store else None
    return {
        "event": SOURCE_CHANGED,
        "resource": {"prefect.resource.id": f"retrofresh.source.{source}", "prefect.resource.name": source},
        "related": related,
        "occurred": when,
        "payload": {"urls": batch, "source": source, "origin": origin, "detected_at": when.isoformat()},
    }


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

    when = detected_at or utcnow()
    events = []
    for batch in batches(urls):
        event = emit_event(**_event_fields(batch, source=source, origin=origin, store=store, when=when))
        if event is None:
            LOG.warning("no Prefect API to send %s to (set PREFECT_API_URL): %d URLs not announced", SOURCE_CHANGED, len(batch))
        else:
            events.append(event)
    return events


def deliver_changes(urls: list[str], *, source: str, origin: str, store: str | None = None,
                    detected_at: datetime | None = None, attempts: int = 3) -> list:
    """Send one ``retrofresh.source.changed`` event per batch and wait until the Prefect API has each.

    The events go over Prefect's events websocket with a checkpoint after each one (a ping whose
    answer comes after the server has read the event), not through the background worker that
    :func:`emit_changes` uses, which drops what it cannot send with only a log line.

    Args:
        urls: changed URLs (or files); repeats are dropped.
        source: the configured source they belong to.
        origin: who noticed ("notify", "webhook"), for the UI and logs.
        store: the store the change is for (a related resource, so triggers can filter on it).
        detected_at: when the change was noticed (default: now).
        attempts: connection attempts before giving up.

    Returns:
        The delivered events.

    Raises:
        ChangesNotDelivered: no Prefect API is configured, or it could not be reached or did not
            take an event; the message names the API and the reason, ``urls`` what was not announced.
    """
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.asyncutils import run_coro_as_sync

    when = detected_at or utcnow()
    events = [Event(**{k: v for k, v in _event_fields(batch, source=source, origin=origin, store=store, when=when).items() if v is not None})
              for batch in batches(urls)]
    api = PREFECT_API_URL.value()
    if not api:
        raise ChangesNotDelivered(f"no Prefect API to send {SOURCE_CHANGED} to: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)",
                                  urls=list(dict.fromkeys(urls)), delivered=[])
    delivered: list = []

    async def send() -> None:
        from prefect.events.clients import get_events_client

        async with get_events_client(reconnection_attempts=max(attempts - 1, 0), checkpoint_every=1) as client:
            for event in events:
                await client.emit(event)
                delivered.append(event)

    try:
        run_coro_as_sync(send())
    except Exception as error:  # noqa: BLE001 - whatever stopped the websocket, the events were not taken
        missing = [url for event in events[len(delivered):] for url in event.payload["urls"]]
        raise ChangesNotDelivered(
            f"the Prefect API at {api} did not take {len(events) - len(delivered)} of {len(events)} {SOURCE_CHANGED} events "
            f"({type(error).__name__}: {error or 'no reason given'}); {len(missing)} URLs were not announced",
            urls=missing, delivered=list(delivered),
        ) from error
    return delivered


def flush_events(timeout_s: float = 10.0) -> None:
    """Wait until emitted events have left this process (a short-lived CLI call exits right after)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=timeout_s)
