"""Re-verification of the served shards: a file corrupted on disk under the served version is found and reported."""

from __future__ import annotations

import httpx
import pytest

from model.store import layout
from tests.fixtures.server import ADMIN_TOKEN
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def flip_last_byte(path) -> None:
    """Flip the file's last byte in place (no truncation: the server maps this file; size and inode stay)."""
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        byte = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([byte[0] ^ 0xFF]))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def verification(url: str) -> dict:
    return httpx.get(f"{url}/v1/index", timeout=10).json()["verification"]


def test_a_shard_corrupted_under_the_served_version_is_reported_and_still_served(labelled_store, server_settings, run_server):
    labelled_store.publish("A")
    version = labelled_store.publish("B")  # two shards: A's (all tombstoned) and B's
    shards = [s.id for s in labelled_store.store.manifest(version).shards]
    server = run_server(server_settings(labelled_store.uri, reverify_interval_s=0.2))
    wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=60, what="ready")
    wait_for(lambda: verification(server.url)["passes"] >= 1, timeout=30, what="a first pass")
    clean = verification(server.url)
    assert clean["version"] == version and clean["shards_ok"] == 2 and clean["shards_corrupt"] == []
    assert clean["files"] == 4 and clean["bytes"] > 0 and clean["interval_s"] == 0.2
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "retrofresh_index_corrupt_shards") == 0 and metric(metrics, "retrofresh_index_last_verified_timestamp_seconds") > 0

    bad = shards[-1]
    path = labelled_store.store.backend.local_path(layout.shard_key(bad, layout.INDEX_FILE))
    flip_last_byte(path)
    seen = verification(server.url)["passes"]
    # A pass in flight may have read the file before the flip; the one after it has not.
    wait_for(lambda: verification(server.url)["passes"] >= seen + 2, timeout=30, what="two more passes")
    found = verification(server.url)
    assert found["shards_corrupt"] == [bad] and found["shards_ok"] == 1
    assert [(c["shard"], c["file"]) for c in found["corrupt_files"]] == [(bad, layout.INDEX_FILE)]
    assert "recorded" in found["corrupt_files"][0]["error"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "retrofresh_index_corrupt_shards") == 1
    assert metric(metrics, "retrofresh_index_corrupt_shards_found_total") == 1  # found once, not once per pass
    # Still serving the version it loaded.
    answer = httpx.post(f"{server.url}/v1/retrieve", json={"text": "the harbour master", "k": 1}, timeout=30)
    assert answer.status_code == 200 and answer.json()["index_version"] == version

    flip_last_byte(path)  # restored
    now = httpx.post(f"{server.url}/admin/reverify", headers=ADMIN, timeout=30)
    assert now.status_code == 200 and now.json()["shards_corrupt"] == [] and now.json()["shards_ok"] == 2
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric(metrics, "retrofresh_index_corrupt_shards") == 0 and metric(metrics, "retrofresh_index_corrupt_shards_found_total") == 1


def test_with_the_interval_at_zero_only_an_admin_call_verifies(labelled_store, server_settings, run_server):
    version = labelled_store.publish("A")
    server = run_server(server_settings(labelled_store.uri, reverify_interval_s=0))
    wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, timeout=60, what="ready")
    assert not server.state.reverifier.running
    assert verification(server.url) == {**verification(server.url), "passes": 0, "verified_at": None, "interval_s": 0.0}
    assert httpx.post(f"{server.url}/admin/reverify", timeout=30).status_code == 401
    path = labelled_store.store.backend.local_path(layout.shard_key(labelled_store.store.manifest(version).shards[0].id, layout.CHUNKS_FILE))
    flip_last_byte(path)
    report = httpx.post(f"{server.url}/admin/reverify", headers=ADMIN, timeout=30).json()
    assert report["passes"] == 1 and report["version"] == version and len(report["shards_corrupt"]) == 1
    assert verification(server.url)["corrupt_files"][0]["file"] == layout.CHUNKS_FILE
