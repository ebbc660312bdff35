"""The store's refresh lease (``leases/refresh.json``): at most one writer refreshes a store at a time.

The lease is a small JSON object in the store written only through the store backend's
compare-and-swap (``Backend.swap(key, data, matches=...)``: a lock + ``os.replace`` locally, ``if_generation_match`` on
GCS), so two processes on two machines can never both hold it:

- acquire: create the object if absent, or replace the exact bytes just read when the record is
  released, expired, or held by a process that is gone (same host, dead pid) or by the same
  Prefect flow run (a retry of it);
- renew: replace our own record with one that expires later;
- release: replace our own record with a released one. The object stays, so release needs no
  conditional delete.

Every record carries a fresh random token, so "the bytes we wrote" identifies our acquisition.

Publishing is itself a compare-and-swap on ``CURRENT``; the lease only keeps a second refresh from
doing a whole ingest that would lose that race, and tells the user who holds the store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Iterator

from model.contracts.clock import utcnow
from model.store import layout
from model.store.backends import Backend, CasFailed

LOG = logging.getLogger(__name__)

LEASE_PATH = layout.lease_key("refresh")  # leases/refresh.json


class LeaseHeld(RuntimeError):
    """Someone else holds the refresh lease; the message names them and until when."""

    def __init__(self, store: str, record: "LeaseRecord"):
        super().__init__(
            f"the refresh lease on {store} is held by {record.holder} (since {record.acquired_at}, "
            f"until {record.expires_at}); another refresh is running. Wait for it, or if that process "
            f"is gone, for the lease to expire."
        )
        self.store = store
        self.record = record


class LeaseLost(RuntimeError):
    """Our lease was taken over (it expired and another writer acquired it)."""


@dataclass(frozen=True)
class LeaseRecord:
    """What ``leases/refresh.json`` holds."""

    holder: str
    token: str
    host: str
    pid: int
    acquired_at: str
    expires_at: str
    flow_run_id: str | None = None
    released_at: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "LeaseRecord":
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("lease object is not a JSON object")
        names = {"holder", "token", "host", "pid", "acquired_at", "expires_at", "flow_run_id", "released_at"}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def free_at(self, now: datetime) -> bool:
        """Released, or past its expiry."""
        return self.released_at is not None or datetime.fromisoformat(self.expires_at) <= now


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RefreshLease:
    """The refresh lease of one store.

    Args:
        backend: the store's blob backend (``Store.backend``).
        holder: a human-readable name shown to whoever finds the lease taken.
        ttl_s: how long the lease lasts without a renewal; a crashed holder blocks others this long
            at most (less when it ran on the same host: its dead pid frees the lease at once).
        flow_run_id: the Prefect flow run holding it; a retry of that same run may take it over.
        path: where the lease object lives in the store.
        clock: injectable for tests.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        holder: str,
        ttl_s: float = 3600.0,
        flow_run_id: str | None = None,
        path: str = LEASE_PATH,
        clock: Callable[[], datetime] = utcnow,
    ):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self.backend = backend
        self.holder = holder
        self.ttl_s = float(ttl_s)
        self.flow_run_id = flow_run_id
        self.path = path
        self.clock = clock
        self.record: LeaseRecord | None = None
        self._written: bytes | None = None  # the exact bytes of our record in the store
        self._lock = threading.Lock()  # the heartbeat thread and the flow both swap the record
        self.lost: LeaseLost | None = None  # set when a heartbeat found the lease taken over

    def _new_record(self) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(
            holder=self.holder,
            token=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            acquired_at=now.isoformat(),
            expires_at=(now + timedelta(seconds=self.ttl_s)).isoformat(),
            flow_run_id=self.flow_run_id,
        )

    def _takeover_reason(self, current: LeaseRecord) -> str | None:
        """Why the lease in the store may be taken, or None when it is live and someone else's."""
        if current.released_at is not None:
            return "released"
        if current.free_at(self.clock()):
            return f"expired at {current.expires_at}"
        if self.flow_run_id and current.flow_run_id == self.flow_run_id:
            return "held by an earlier attempt of this flow run"
        if current.host == socket.gethostname() and current.pid != os.getpid() and not _pid_alive(current.pid):
            return f"its holder (pid {current.pid} on this host) is gone"
        return None

    def _read_bytes(self) -> bytes | None:
        try:
            return self.backend.read_bytes(self.path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _parse(data: bytes | None) -> LeaseRecord | None:
        if data is None:
            return None
        try:
            return LeaseRecord.from_json(data)
        except (ValueError, TypeError) as error:
            LOG.warning("unreadable lease object (%s); treating it as free", error)
            return None

    def read(self) -> LeaseRecord | None:
        """The lease record in the store (None if none was ever written or it is unreadable)."""
        return self._parse(self._read_bytes())

    def acquire(self) -> LeaseRecord:
        """Take the lease or fail fast.

        Returns:
            The record now in the store.

        Raises:
            LeaseHeld: another live holder has it (also when it won a race for it just now).
        """
        record = self._new_record()
        data = record.to_json()
        found = self._read_bytes()
        current = self._parse(found)
        if found is not None:
            reason = self._takeover_reason(current) if current is not None else "unreadable"
            if reason is None:
                raise LeaseHeld(self.backend.uri, current)
            if current is not None and current.released_at is None:
                LOG.warning("taking over the refresh lease from %s: %s", current.holder, reason)
        try:
            self.backend.swap(self.path, data, matches=lambda actual: actual == found)
        except CasFailed as failed:
            # Someone wrote the lease between our read and our write: they won.
            raise LeaseHeld(self.backend.uri, self._parse(failed.actual) or record) from None
        self.record, self._written = record, data
        LOG.info("acquired the refresh lease on %s as %s until %s", self.backend.uri, self.holder, record.expires_at)
        return record

    def _swap(self, make: Callable[[LeaseRecord], LeaseRecord]) -> LeaseRecord:
        with self._lock:
            if self.record is None:
                raise self.lost or LeaseLost("the refresh lease is not held")
            record = make(self.record)
            data = record.to_json()
            try:
                written = self._written
                self.backend.swap(self.path, data, matches=lambda actual: actual == written)
            except CasFailed as failed:
                other = self._parse(failed.actual)
                self.record, self._written = None, None
                self.lost = LeaseLost(
                    f"the refresh lease on {self.backend.uri} was taken over by "
                    f"{other.holder if other else 'someone else'} after it expired"
                )
                raise self.lost from None
            self.record, self._written = record, data
            return record

    def renew(self) -> LeaseRecord:
        """Push the expiry ``ttl_s`` into the future.

        Raises:
            LeaseLost: the lease expired and another writer took it.
        """
        return self._swap(lambda r: replace(r, expires_at=(self.clock() + timedelta(seconds=self.ttl_s)).isoformat()))

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer ours (before an irreversible step)."""
        # Under the lock: a heartbeat renewal between its write and its record update would
        # otherwise look like someone else's lease.
        with self._lock:
            if self.record is None:
                raise self.lost or LeaseLost("the refresh lease is not held")
            other = self.read()
            if other != self.record:
                raise LeaseLost(f"the refresh lease on {self.backend.uri} is now held by {other.holder if other else 'nobody'}")

    @contextmanager
    def heartbeat(self, interval_s: float | None = None) -> Iterator["RefreshLease"]:
        """Renew the lease from a background thread while the block runs (long ingest jobs).

        Args:
            interval_s: seconds between renewals; default a third of the TTL, so two renewals
                can fail transiently before the lease would expire.
        """
        interval = interval_s if interval_s is not None else self.ttl_s / 3
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    self.renew()
                except LeaseLost as error:
                    LOG.error("%s", error)
                    return
                except Exception as error:  # noqa: BLE001 - a transient store error: try again next beat
                    LOG.warning("could not renew the refresh lease: %r", error)

        thread = threading.Thread(target=beat, name="refresh-lease-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def release(self) -> bool:
        """Mark the lease released (only if still ours).

        Returns:
            True when released; False when it was not held or had already been taken over.
        """
        if self.record is None:
            return False
        try:
            self._swap(lambda r: replace(r, released_at=self.clock().isoformat()))
        except LeaseLost as error:
            LOG.warning("%s; nothing to release", error)
            return False
        with self._lock:
            self.record, self._written = None, None
        LOG.info("released the refresh lease on %s", self.backend.uri)
        return True

    def __enter__(self) -> "RefreshLease":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
