"""``retrofresh refresh`` and ``retrofresh flows`` from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.cli import cli
from model.store import open_store
from tests.flows.support import write_sources

pytestmark = pytest.mark.integration

SUMMARY_KEYS = {"version", "parent", "documents", "chunks_added", "chunks_removed", "seconds"}
OUTCOME_KEYS = {"new", "changed", "unchanged", "deleted", "failed", "robots_blocked"}


@pytest.mark.slow
def test_refresh_into_a_gcs_store_on_the_emulator_with_an_ephemeral_prefect_api(gcs_bucket, sample_site, tmp_path):
    """A real shell run: no Prefect server configured, so the CLI starts a temporary local API."""
    site = sample_site(0)
    sources = write_sources(tmp_path / "sources.yaml", site.base_url)
    store = f"gs://{gcs_bucket}/index"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    retrofresh = Path(sys.executable).with_name("retrofresh")
    done = subprocess.run([str(retrofresh), "refresh", "--sources", str(sources), "--store", store, "--json"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert SUMMARY_KEYS <= set(summary) and set(summary["documents"]) == OUTCOME_KEYS
    assert summary["parent"] is None and summary["documents"]["new"] == len(site.edition.document_paths())
    assert summary["chunks_added"] > 0 and summary["chunks_removed"] == 0 and summary["seconds"] > 0
    assert open_store(store).current() == summary["version"]
    assert open_store(store).manifest().stats.chunks == summary["chunks_added"]


def test_refresh_json_in_process_reports_an_unchanged_store(refreshed, tmp_path):
    from tests.flows.support import copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(1)
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(refreshed.sources), "--store", store, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["version"] == summary["parent"] == open_store(store).current() and summary["published"] is False
    assert summary["documents"]["unchanged"] == len(refreshed.site.edition.document_paths())


def test_refresh_without_sources_exits_nonzero_saying_what_is_missing(prefect_api, tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_SOURCES", raising=False)
    result = CliRunner().invoke(cli, ["refresh", "--store", str(tmp_path / "store")])
    assert result.exit_code == 1 and "no sources given" in result.output


def test_refresh_with_a_held_lease_exits_nonzero_naming_the_holder(prefect_api, refreshed, tmp_path):
    from flows.common.lease import RefreshLease
    from tests.flows.support import copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    RefreshLease(open_store(store).backend, holder="someone else's refresh", ttl_s=600).acquire()
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(refreshed.sources), "--store", store, "--json"])
    assert result.exit_code == 1 and "held by someone else's refresh" in result.output


def test_refresh_json_failure_prints_one_object_with_the_error_and_the_step(prefect_api, refreshed, tmp_path):
    """A held lease fails the take-lease task: stdout is one JSON object, published false, exit 1."""
    from flows.common.lease import RefreshLease
    from tests.flows.support import copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    before = open_store(store).current()
    RefreshLease(open_store(store).backend, holder="someone else's refresh", ttl_s=600).acquire()
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(refreshed.sources), "--store", store, "--json"])
    assert result.exit_code == 1, result.output
    failure = json.loads(result.stdout)  # the whole of stdout: exactly one object
    assert failure["published"] is False and failure["store"] == store and failure["flow_run_id"]
    assert failure["error"]["type"] == "LeaseHeld" and failure["error"]["step"] == "take-lease"
    assert "held by someone else's refresh" in failure["error"]["message"]
    assert "refresh failed" in result.stderr and open_store(store).current() == before


def test_a_full_disk_at_the_lease_fails_the_refresh_cleanly(prefect_api, refreshed, tmp_path, monkeypatch):
    """ENOSPC writing the lease: one JSON failure naming take-lease, no .tmp-* file left, the index as it was."""
    import errno

    from model.store import layout
    from tests.flows.support import copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    before = {p.relative_to(store).as_posix(): p.read_bytes() for p in Path(store).rglob("*") if p.is_file()}
    real_fsync = os.fsync

    def fsync_on_a_full_disk(fd: int) -> None:
        if f"/{layout.LEASES}{layout.TEMP_PREFIX}" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_on_a_full_disk)
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(refreshed.sources), "--store", store, "--json"])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert result.exit_code == 1, result.output
    failure = json.loads(result.stdout)
    assert failure["published"] is False and failure["error"]["type"] == "OSError"
    assert failure["error"]["step"] == "take-lease" and "No space left on device" in failure["error"]["message"]
    after = {p.relative_to(store).as_posix(): p.read_bytes() for p in Path(store).rglob("*") if p.is_file()}
    assert after == before  # no .tmp-* file, no lease, CURRENT and every version as they were


def test_a_failed_refresh_keeps_tracebacks_in_its_log_file_unless_verbose(prefect_api, tmp_path):
    """A real shell run: the terminal gets Prefect's log lines and the error, the log file the tracebacks."""
    from flows.common.lease import RefreshLease

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("A document that never gets indexed: the lease is held.")
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - kind: files\n    name: docs\n    glob: {tmp_path / 'docs'}/*.txt\n")
    store = tmp_path / "store"
    RefreshLease(open_store(store).backend, holder="someone else's refresh", ttl_s=600).acquire()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "RETROFRESH_CACHE_DIR": str(tmp_path / "cache")}
    retrofresh = Path(sys.executable).with_name("retrofresh")
    for verbose in (False, True):
        log = tmp_path / f"verbose-{verbose}.log"
        done = subprocess.run([str(retrofresh), "refresh", "--sources", str(sources), "--store", str(store), "--log-file", str(log),
                               *(["--verbose"] if verbose else [])], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Error: refresh failed: the refresh lease" in done.stderr and f"is in {log}" in done.stderr, done.stderr[-3000:]
        assert ("Traceback" in done.stderr) is verbose, done.stderr[-3000:]
        kept = log.read_text()
        assert "Traceback (most recent call last)" in kept and "flows.common.lease.LeaseHeld: the refresh lease" in kept


def test_refresh_json_failure_outside_a_task_names_the_function_the_flow_called(prefect_api, tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_SOURCES", raising=False)
    result = CliRunner().invoke(cli, ["refresh", "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 1, result.output
    failure = json.loads(result.stdout)
    assert failure["published"] is False
    assert failure["error"]["type"] == "MissingInput" and failure["error"]["step"] == "resolve_inputs"
    assert "no sources given" in failure["error"]["message"]


def test_flows_list_shows_the_deployments_and_their_schedules():
    result = CliRunner().invoke(cli, ["flows", "list"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert "cron=*/15 * * * *" in lines["refresh"] and "on demand" in lines["rollback"]


def test_flows_serve_refuses_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments: []\n")
    result = CliRunner().invoke(cli, ["flows", "serve", "--config", str(bad)])
    assert result.exit_code == 1 and "non-empty 'deployments' list" in result.output
