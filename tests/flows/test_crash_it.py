"""Crash safety: a refresh process killed (SIGKILL) mid-run, then a rerun that completes and publishes once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.common.lease import LEASE_PATH, RefreshLease
from flows.refresh import refresh_corpus
from model.store import layout, open_store
from tests.flows.support import copy_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def manifests(store: str) -> set[str]:
    return {o.key for o in open_store(store).backend.list(layout.VERSIONS)}


def test_a_rerun_after_a_refresh_killed_before_its_publish_completes_and_publishes_once(prefect_api, refreshed, tmp_path):
    """Killed once its draft is written (the ingest is done, validation or publish under way)."""
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(2)
    before, known = open_store(store).current(), manifests(store)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    retrofresh = Path(sys.executable).with_name("retrofresh")
    log = open(tmp_path / "killed.log", "w")
    victim = subprocess.Popen([str(retrofresh), "refresh", "--sources", str(refreshed.sources), "--store", store],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    lease = RefreshLease(open_store(store).backend, holder="observer")
    try:
        deadline = time.monotonic() + 300
        while True:
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the refresh never wrote its draft"
            record = lease.read()
            held = record is not None and record.released_at is None and record.pid == victim.pid
            if held and manifests(store) - known:
                break
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)  # no finally block runs: the lease stays held
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        log.close()
    stuck = lease.read()
    assert stuck.pid == victim.pid and stuck.released_at is None
    published_before_rerun = open_store(store).current()

    summary = refresh_corpus(sources=str(refreshed.sources), store=store)  # takes over the dead pid's lease

    final = open_store(store).manifest()
    if published_before_rerun == before:  # killed before its publish: the rerun publishes
        assert summary["published"] and summary["parent"] == before and final.version == summary["version"]
    else:  # killed after its publish: nothing left to do
        assert not summary["published"] and final.version == published_before_rerun
    assert final.parent == before  # one publish on top of the old version, not two
    assert final.stats.documents == len(refreshed.site.edition.document_paths())
    assert open_store(store).backend.exists(LEASE_PATH) and lease.read().released_at is not None
