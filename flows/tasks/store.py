"""Prefect tasks over the index store: the lease, CURRENT, publish, compaction, rollback, gc.

Tasks take the store URI (a string the UI can show) and open the store themselves; only I/O
failures that may pass (network, 5xx) are retried, never a refusal such as a held lease or a
publish conflict.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.common.lease import LeaseHeld, RefreshLease
from flows.common.retry import IO_RETRIES
from model.contracts.clock import utcnow

LOG = logging.getLogger(__name__)


def open_store(store_uri: str):
    from model.store import open_store as _open

    return _open(store_uri)


def holder_name(purpose: str) -> str:
    """Who is asking for the lease, as the user will read it in a LeaseHeld message."""
    run_id, run_name = runtime.flow_run.id, runtime.flow_run.name
    where = f"on {socket.gethostname()} (pid {os.getpid()})"
    if run_id:
        return f"{purpose} flow run '{run_name}' ({run_id}) {where}"
    return f"{purpose} {where}"


@task(name="take-lease", **IO_RETRIES)
def take_lease(store_uri: str, purpose: str, ttl_s: float = 600.0) -> RefreshLease:
    """Acquire the store's refresh lease or fail fast with :class:`flows.common.lease.LeaseHeld`."""
    lease = RefreshLease(
        open_store(store_uri).backend,
        holder=holder_name(purpose),
        ttl_s=ttl_s,
        flow_run_id=str(runtime.flow_run.id) if runtime.flow_run.id else None,
    )
    lease.acquire()
    return lease


@task(name="release-lease", **IO_RETRIES)
def release_lease(lease: RefreshLease) -> bool:
    """Release the lease if it is still ours."""
    return lease.release()


@task(name="wait-for-lease", cache_policy=NO_CACHE)
def wait_for_lease(store_uri: str, purpose: str, ttl_s: float, wait_s: float, poll_s: float = 0.25) -> RefreshLease:
    """The refresh lease, waiting up to ``wait_s`` for the refresh that holds it to finish.

    Raises:
        LeaseHeld: still held after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return take_lease.fn(store_uri, purpose, ttl_s)
        except LeaseHeld:
            if time.monotonic() >= deadline:
                raise
            time.sleep(poll_s)


@contextmanager
def holding_lease(store_uri: str, purpose: str, ttl_s: float, *, wait_s: float | None = None) -> Iterator[RefreshLease]:
    """Hold the store's refresh lease for the block: take it, renew it every ttl/3, always release it.

    Args:
        store_uri: the store.
        purpose: who holds it (the flow's name), shown to anyone the lease refuses.
        ttl_s: how long the lease outlives a crashed holder.
        wait_s: wait this long for a holder to finish (``wait-for-lease``); None: fail at once
            with :class:`flows.common.lease.LeaseHeld` (``take-lease``).
    """
    lease = take_lease(store_uri, purpose, ttl_s) if wait_s is None else wait_for_lease(store_uri, purpose, ttl_s, wait_s)
    try:
        with lease.heartbeat():  # renewed every ttl/3 while this run is alive
            yield lease
    finally:
        release_lease(lease)


@task(name="read-current", **IO_RETRIES)
def read_current(store_uri: str) -> str | None:
    """The version CURRENT names (None for a store nothing was published to)."""
    return open_store(store_uri).current()


@task(name="publish-version", **IO_RETRIES)
def publish_version(store_uri: str, version: str, expected_current: str | None, lease: RefreshLease | None = None) -> str:
    """Verify a draft and swap CURRENT to it (compare-and-swap against ``expected_current``).

    A retry after a publish whose answer was lost finds CURRENT already at ``version`` and
    succeeds, so the version is published exactly once.

    Returns:
        The publish time (ISO 8601, UTC).

    Raises:
        PublishConflict: another writer moved CURRENT (nothing was published).
        LeaseLost: our lease was taken over; we must not publish.
    """
    from model.store import PublishConflict

    store = open_store(store_uri)
    if lease is not None:
        lease.check()
    if store.current() == version:
        get_run_logger().info("%s is already CURRENT (an earlier attempt published it)", version)
        return utcnow().isoformat()
    draft = store.manifest(version)
    built_on = draft.parent
    if built_on != expected_current and built_on is not None:
        # A compacted draft names the ingest draft it merged as parent; its content was built on
        # that draft's parent. The compare-and-swap on CURRENT then enforces the rest.
        built_on = store.manifest(built_on).parent
    if built_on != expected_current:
        raise PublishConflict(
            f"{version} was built on {built_on}, not on {expected_current}; refusing to publish it over {expected_current}",
            expected=expected_current,
            actual=store.current(),
        )
    try:
        store.publish(version, expected_current=expected_current, check_parent=False)
    except PublishConflict:
        if store.current() == version:
            return utcnow().isoformat()
        raise
    get_run_logger().info("published %s (was %s)", version, expected_current)
    return utcnow().isoformat()


@task(name="compact-version", **IO_RETRIES)
def compact_version(store_uri: str, version: str) -> str:
    """Merge a version's shards into a new draft (written, not published); returns its id."""
    store = open_store(store_uri)
    compacted = store.compact(version)
    store.write_manifest(compacted)
    get_run_logger().info(
        "compacted %s (%d shards) into %s (%d shards)",
        version, len(store.manifest(version).shards), compacted.version, len(compacted.shards),
    )
    return compacted.version


@task(name="count-shards", **IO_RETRIES)
def count_shards(store_uri: str, version: str) -> int:
    """How many shards a version lists."""
    return len(open_store(store_uri).manifest(version).shards)


@task(name="rollback-version", **IO_RETRIES)
def rollback_version(store_uri: str, version: str) -> str | None:
    """Point CURRENT at ``version`` after verifying its files.

    A compare-and-swap against what CURRENT holds when read, a damaged CURRENT included (this is
    its repair); a retry after a lost answer finds CURRENT at ``version`` and writes it again.

    Returns:
        The version CURRENT named before (None: none, or CURRENT was damaged).
    """
    return open_store(store_uri).rollback(version)


@task(name="collect-garbage", **IO_RETRIES)
def collect_garbage(store_uri: str, keep: int, min_age_s: float) -> list[str]:
    """Delete what the newest ``keep`` versions and CURRENT do not reference."""
    return open_store(store_uri).gc(keep, min_age_s=min_age_s)
