"""refresh_corpus end to end: real Beam runs over the sample site, a real store, the Prefect test API."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flows.common.lease import RefreshLease
from flows.refresh import refresh_corpus
from model.store import open_store
from tests.flows.support import artifacts_of, copy_store, flow_run_id, task_run_names, write_sources

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def world_diff(world, before: int, after: int) -> dict[str, int]:
    """Document outcomes the world itself says an ingest of ``after`` over ``before`` must find."""
    old, new = world.edition(before), world.edition(after)
    a, b = set(old.document_paths()), set(new.document_paths())
    return {
        "new": len(b - a),
        "changed": sum(old.pages[p].body != new.pages[p].body for p in a & b),
        "unchanged": sum(old.pages[p].body == new.pages[p].body for p in a & b),
        "deleted": len(a - b),
    }


def test_editions_0_and_1_publish_two_versions_with_the_expected_counts_and_artifacts(refreshed):
    world = refreshed.site.world
    first, second = (s.result() for s in refreshed.states)
    store = open_store(str(refreshed.store))

    assert first["published"] and first["parent"] is None
    assert second["published"] and second["parent"] == first["version"]
    assert store.current() == second["version"]
    assert [m.version for m in store.versions()] == [first["version"], second["version"]]

    expected_first = {"new": len(world.edition(0).document_paths()), "changed": 0, "unchanged": 0, "deleted": 0}
    assert {k: first["documents"][k] for k in expected_first} == expected_first
    assert {k: second["documents"][k] for k in expected_first} == world_diff(world, 0, 1)
    for summary in (first, second):
        assert summary["documents"]["robots_blocked"] == 1  # /private/staff.html, linked and disallowed
        assert summary["documents"]["failed"] >= 1  # /reports/annual-report.html always answers 500

    v1, v2 = store.manifest(first["version"]), store.manifest(second["version"])
    assert v1.stats.chunks == first["chunks_added"] > 0 and first["chunks_removed"] == 0
    assert v2.stats.chunks == v1.stats.chunks + second["chunks_added"] - second["chunks_removed"]
    assert second["chunks_removed"] > 0  # changed and deleted pages took their old chunks along
    assert v2.stats.documents == len(world.edition(1).document_paths())
    assert second["validation"]["probe_recall"] >= 0.9 and second["validation"]["live_chunks"] == v2.stats.chunks

    # freshness lag = publish time - newest source change (the edition's date on the site)
    assert second["newest_source_change"].startswith(world.edition_date(1).isoformat())
    assert second["freshness_lag_s"] > 0

    artifacts = artifacts_of(flow_run_id(refreshed.states[1]))
    table = artifacts["refresh-documents"].data
    rows = table if isinstance(table, list) else __import__("json").loads(table)
    assert {r["outcome"]: r["documents"] for r in rows} == {k.replace("_", "-"): v for k, v in second["documents"].items()}
    markdown = artifacts["refresh-summary"].data
    for text in (second["version"], first["version"], "chunks added", str(second["chunks_added"]), "freshness lag"):
        assert text in markdown


def test_a_rerun_with_nothing_new_publishes_nothing(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(1)
    before = open_store(store).current()
    summary = refresh_corpus(sources=str(refreshed.sources), store=store)
    assert not summary["published"] and summary["version"] == summary["parent"] == before
    assert summary["documents"]["new"] == summary["documents"]["changed"] == summary["documents"]["deleted"] == 0
    assert open_store(store).current() == before and len(open_store(store).versions()) == 2


def broken_embedder(tmp_path: Path) -> Path:
    """The bundled encoder with a corrupt tokenizer.json: same spec (so the launch accepts it),
    but every Beam worker fails to load it: a failure inside the ingest job."""
    from model.contracts.embedder import default_embedder_path

    broken = tmp_path / "all-MiniLM-L6-v2"
    broken.mkdir()
    for file in default_embedder_path().iterdir():
        if file.name != "tokenizer.json":
            (broken / file.name).symlink_to(file)
    (broken / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    return broken


def test_a_failure_inside_the_ingest_leaves_current_unchanged_and_the_rerun_succeeds(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(2)
    before = open_store(store).current()

    state = refresh_corpus(sources=str(refreshed.sources), store=store, embedder_path=str(broken_embedder(tmp_path)), return_state=True)
    assert state.is_failed()
    assert "JSONDecodeError" in state.message or "tokenizer" in state.message.lower(), state.message
    assert open_store(store).current() == before
    lease = RefreshLease(open_store(store).backend, holder="test").read()
    assert lease.released_at is not None  # the failed run let go of the store

    summary = refresh_corpus(sources=str(refreshed.sources), store=store)
    assert summary["published"] and summary["parent"] == before
    assert open_store(store).current() == summary["version"] != before


def test_two_concurrent_refreshes_one_publishes_the_other_fails_fast_naming_the_holder(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(2)
    before = open_store(store).current()
    lease = RefreshLease(open_store(store).backend, holder="test")
    results = {}
    # The first refresh crawls with a crawl delay, so it surely still holds the lease when the
    # second one starts (on loopback a whole crawl otherwise ends in about a second).
    slow_sources = write_sources(tmp_path / "slow.yaml", refreshed.site.base_url, crawl_delay_s=0.25)

    def first():
        results["first"] = refresh_corpus(sources=str(slow_sources), store=store, return_state=True)

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 120
    while (record := lease.read()) is None or record.released_at is not None:
        assert time.monotonic() < deadline and thread.is_alive(), "the first refresh never took the lease"
        time.sleep(0.05)
    second = refresh_corpus(sources=str(refreshed.sources), store=store, return_state=True)
    thread.join()

    assert second.is_failed()
    assert f"held by {record.holder}" in second.message and "refresh-corpus flow run" in second.message
    assert [name.rsplit("-", 1)[0] for name in task_run_names(flow_run_id(second))] == ["take-lease"]  # no ingest ran
    assert results["first"].is_completed()
    published = results["first"].result()
    assert published["published"] and published["parent"] == before
    assert open_store(store).current() == published["version"]
    assert len(open_store(store).versions()) == 3
