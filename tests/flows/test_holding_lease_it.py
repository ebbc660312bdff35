"""``holding_lease``: the lease is held for the block, renewed, and released however the block ends."""

from __future__ import annotations

import threading

import pytest
from prefect import flow

from flows.common.lease import LeaseHeld, RefreshLease
from flows.tasks.store import holding_lease
from model.store import open_store

pytestmark = pytest.mark.integration


def lease_record(store: str):
    return RefreshLease(open_store(store).backend, holder="observer").read()


def test_the_lease_is_released_when_the_block_fails(prefect_api, tmp_path):
    store = str(tmp_path / "store")
    open_store(store)

    @flow
    def failing():
        with holding_lease(store, "failing", 60.0) as lease:
            assert lease_record(store).token == lease.record.token and lease_record(store).released_at is None
            raise ValueError("the block failed")

    with pytest.raises(ValueError, match="the block failed"):
        failing()
    assert lease_record(store).released_at is not None


def test_a_second_holder_fails_at_once_or_waits_for_the_first(prefect_api, tmp_path):
    store = str(tmp_path / "store")
    open_store(store)
    inside, leave = threading.Event(), threading.Event()

    @flow
    def first():
        with holding_lease(store, "first", 60.0):
            inside.set()
            leave.wait(30)

    @flow
    def second(wait_s: float | None) -> str:
        with holding_lease(store, "second", 60.0, wait_s=wait_s) as lease:
            return lease.holder

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(30)
        with pytest.raises(LeaseHeld, match="first"):
            second(None)
        threading.Timer(0.5, leave.set).start()
        assert second(30.0).startswith("second")
    finally:
        leave.set()
        thread.join(30)
    assert lease_record(store).released_at is not None
