"""The refresh lease on a local store and on GCS (fake-gcs-server): one holder, fail-fast, takeover."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from flows.common.lease import LEASE_PATH, LeaseHeld, LeaseLost, LeaseRecord, RefreshLease
from model.store.backends import open_backend
from model.store.uri import parse_store_uri

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def backend(store_uri):
    return open_backend(parse_store_uri(store_uri))


def test_a_second_holder_fails_fast_with_a_message_naming_the_first(backend):
    first = RefreshLease(backend, holder="refresh-corpus run alpha", ttl_s=600)
    record = first.acquire()
    assert json.loads(backend.read_bytes(LEASE_PATH))["token"] == record.token
    with pytest.raises(LeaseHeld, match="held by refresh-corpus run alpha") as info:
        RefreshLease(backend, holder="refresh-corpus run beta").acquire()
    assert info.value.record.holder == "refresh-corpus run alpha"
    assert first.release()
    second = RefreshLease(backend, holder="beta")
    second.acquire()
    assert first.read().holder == "beta" and first.read().released_at is None
    second.release()
    assert first.read().released_at is not None


def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(backend):
    clock = Clock()
    old = RefreshLease(backend, holder="old", ttl_s=60, clock=clock)
    old.acquire()
    clock.now += timedelta(seconds=30)
    with pytest.raises(LeaseHeld):
        RefreshLease(backend, holder="new", clock=clock).acquire()
    old.renew()  # pushes the expiry to t+90
    clock.now += timedelta(seconds=59)
    with pytest.raises(LeaseHeld):
        RefreshLease(backend, holder="new", clock=clock).acquire()
    clock.now += timedelta(seconds=2)
    new = RefreshLease(backend, holder="new", clock=clock)
    new.acquire()
    with pytest.raises(LeaseLost, match="taken over by new"):
        old.renew()
    assert old.release() is False  # does not clobber the new holder
    assert new.read().holder == "new" and new.read().released_at is None


def test_a_retry_of_the_same_flow_run_takes_its_own_lease_back(backend):
    RefreshLease(backend, holder="attempt 1", flow_run_id="run-1").acquire()  # crashed, never released
    with pytest.raises(LeaseHeld):
        RefreshLease(backend, holder="other", flow_run_id="run-2").acquire()
    RefreshLease(backend, holder="attempt 2", flow_run_id="run-1").acquire()


def test_a_lease_of_a_dead_process_on_this_host_is_free(backend):
    lease = RefreshLease(backend, holder="crashed")
    record = lease.acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    forged = LeaseRecord(**{**record.__dict__, "pid": dead.pid})
    backend.swap(LEASE_PATH, forged.to_json(), matches=lambda actual: actual == record.to_json())
    RefreshLease(backend, holder="rerun").acquire()


def test_an_unreadable_lease_object_does_not_block_forever(backend):
    backend.swap(LEASE_PATH, b"{not json", matches=lambda actual: actual is None)
    lease = RefreshLease(backend, holder="fresh")
    lease.acquire()
    assert lease.read().holder == "fresh"


def test_racing_holders_exactly_one_wins(backend):
    barrier = threading.Barrier(6)
    results: list[str] = []

    def contend(i: int) -> None:
        lease = RefreshLease(backend, holder=f"racer-{i}")
        barrier.wait()
        try:
            lease.acquire()
            results.append("won")
        except LeaseHeld:
            results.append("held")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] * 5 + ["won"]


def test_bad_ttl_is_refused(backend):
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        RefreshLease(backend, holder="x", ttl_s=0)


def test_heartbeat_keeps_a_short_lease_alive_and_check_sees_a_takeover(backend):
    import time

    lease = RefreshLease(backend, holder="long job", ttl_s=0.8)
    lease.acquire()
    with lease.heartbeat(interval_s=0.1):
        time.sleep(1.6)  # twice the TTL: only the renewals keep it
        with pytest.raises(LeaseHeld, match="long job"):
            RefreshLease(backend, holder="other").acquire()
        lease.check()
    time.sleep(1.0)  # no more renewals: it expires
    RefreshLease(backend, holder="other").acquire()
    with pytest.raises(LeaseLost, match="held by other"):
        lease.check()


def test_a_full_disk_while_taking_the_lease_leaves_no_temp_file_and_the_index_untouched(tmp_path, monkeypatch):
    """ENOSPC at the fsync of the lease's temporary file: the error surfaces, nothing is left behind."""
    import errno
    import os

    from model.store import layout

    backend = open_backend(parse_store_uri(str(tmp_path / "store")))
    backend.put_bytes("versions/v000001-aaaa/manifest.json", b'{"version": "v000001-aaaa"}')
    backend.swap(layout.CURRENT, b"v000001-aaaa\n", matches=lambda actual: actual is None)
    published = {key: backend.read_bytes(key) for key in (layout.CURRENT, "versions/v000001-aaaa/manifest.json")}
    real_fsync = os.fsync

    def fsync_on_a_full_disk(fd: int) -> None:
        if f"/{layout.LEASES}{layout.TEMP_PREFIX}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    with pytest.raises(OSError) as info:
        RefreshLease(backend, holder="refresh on a full disk").acquire()
    assert info.value.errno == errno.ENOSPC
    leftovers = [o.key for o in backend.list("") if layout.is_temporary(o.key)]
    assert leftovers == [] and not backend.exists(LEASE_PATH)
    assert {key: backend.read_bytes(key) for key in published} == published
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert RefreshLease(backend, holder="refresh after space was freed").acquire().holder == "refresh after space was freed"
