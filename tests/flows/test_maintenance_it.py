"""Rollback, compaction, garbage collection and the freshness evaluation, on copies of a real store."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from flows._freshness_probes import edition_from_sitemap
from flows.compact import compact_index
from flows.evaluate_freshness import evaluate_freshness
from flows.gc import gc_store
from flows.refresh import refresh_corpus
from flows.rollback import rollback_index
from model.client import RetroClient
from model.store import open_store
from tests.flows.support import artifacts_of, copy_store, flow_run_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_TOKEN = "test-admin-token"  # what tests/fixtures/server.py's servers expect


def test_rollback_points_current_back_and_reloads_a_real_server(refreshed, tmp_path, server_settings, run_server, monkeypatch):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, second = (s.result()["version"] for s in refreshed.states)
    server = run_server(server_settings(store, reload_interval_s=3600.0))  # only /admin/reload moves it
    with RetroClient(server.url) as client:
        client.wait_ready(timeout=120)  # /healthz answers before the first version is loaded
    assert httpx.get(f"{server.url}/v1/index").json()["version"] == second
    monkeypatch.setenv("RETROFRESH_ADMIN_TOKEN", ADMIN_TOKEN)

    state = rollback_index(first, store=store, servers=[server.url], return_state=True)
    result = state.result()
    assert open_store(store).current() == first and result["previous"] == second
    assert result["servers"][0]["ok"] and result["servers"][0]["index_version"] == first
    assert httpx.get(f"{server.url}/v1/index").json()["version"] == first
    summary = artifacts_of(flow_run_id(state))["rollback-summary"].data
    assert first in summary and second in summary and "1 of 1 ok" in summary


def test_rollback_repairs_a_damaged_current(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, _ = (s.result()["version"] for s in refreshed.states)
    (tmp_path / "store" / "CURRENT").write_bytes(b"\xff\xfe")
    result = rollback_index(first, store=store)
    assert open_store(store).current() == first and result["previous"] is None


def test_rollback_to_an_unknown_version_fails_and_changes_nothing(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    before = open_store(store).current()
    state = rollback_index("v000999-deadbeef", store=store, return_state=True)
    assert state.is_failed() and "v000999-deadbeef does not exist" in state.message
    assert open_store(store).current() == before


def test_compaction_publishes_one_shard_with_the_same_chunks_then_gc_removes_the_rest(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    before = open_store(store).manifest()
    assert len(before.shards) == 2

    state = compact_index(store=store, return_state=True)
    result = state.result()
    after = open_store(store).manifest()
    assert result["compacted"] and after.version == result["version"] != before.version
    assert after.parent == before.version and len(after.shards) == 1 and after.tombstones == []
    assert after.stats.chunks == before.stats.chunks == result["live_chunks"]
    assert "compaction-summary" in artifacts_of(flow_run_id(state))
    assert compact_index(store=store)["compacted"] is False  # one shard: nothing to do

    result = gc_store(keep=1, store=store, min_age_s=0)
    assert result["current"] == after.version
    remaining = [m.version for m in open_store(store).versions()]
    assert remaining == [after.version]
    assert any(key.startswith("shards/") for key in result["deleted"])
    with open_store(store).open() as view:  # CURRENT still loads and verifies
        assert view.count == after.stats.chunks


def test_gc_refuses_to_keep_nothing(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    state = gc_store(keep=0, store=store, return_state=True)
    assert state.is_failed() and "keep must be at least 1" in state.message
    assert len(open_store(store).versions()) == 2


def test_refresh_compacts_when_the_new_version_passes_the_shard_threshold(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(2)
    parent = open_store(store).current()
    summary = refresh_corpus(sources=str(refreshed.sources), store=store, compact_threshold=2)
    published = open_store(store).manifest()
    assert summary["published"] and summary["version"] == published.version and summary["parent"] == parent
    assert summary["compacted_from"] is not None and summary["compacted_from"] != published.version
    draft = open_store(store).manifest(summary["compacted_from"])
    assert len(draft.shards) == 3 and len(published.shards) == 1
    assert published.stats.chunks == draft.stats.chunks == summary["validation"]["live_chunks"]


def test_a_refresh_without_sources_says_what_is_missing(refreshed, tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_SOURCES", raising=False)
    state = refresh_corpus(store=str(tmp_path / "store"), return_state=True)
    assert state.is_failed() and "no sources given" in state.message


def test_evaluate_freshness_tells_the_versions_apart_and_draws_the_plot(refreshed, tmp_path, server_settings, run_server):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, second = (s.result()["version"] for s in refreshed.states)
    refreshed.site.set_edition(1)
    assert edition_from_sitemap(refreshed.site.base_url, refreshed.site.world) == 1
    server = run_server(server_settings(store))
    with RetroClient(server.url) as client:
        client.wait_ready(timeout=120)

    state = evaluate_freshness(store=store, site_url=refreshed.site.base_url, server=server.url,
                               output_dir=str(tmp_path / "eval"), return_state=True)
    result = state.result()
    rows = {row["version"]: row for row in result["versions"]}
    changed = len(refreshed.site.world.changed_facts(1))
    assert result["facts"] == changed == rows[first]["facts"] == rows[second]["facts"]
    # Edition 0's index cannot know edition 1's values; edition 1's index states them.
    assert rows[first]["fresh"] == 0 and rows[first]["stale"] > 0
    assert rows[second]["fresh"] > rows[second]["stale"] and rows[second]["current"]
    assert result["freshness"] == rows[second]["freshness"]

    artifacts = artifacts_of(flow_run_id(state))
    assert {"freshness-versions", "freshness-facts", "freshness-plot"} <= set(artifacts)
    facts = artifacts["freshness-facts"].data
    assert "model_prefers_new" in str(facts) and result["model_scored"] == changed  # the served model scored every fact
    png = Path(result["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and base64.b64encode(png).decode() in artifacts["freshness-plot"].data


def test_evaluate_needs_an_edition_a_site_or_sources(refreshed, tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_SOURCES", raising=False)
    state = evaluate_freshness(store=str(refreshed.store), return_state=True)
    assert state.is_failed() and "pass edition=N" in state.message


def test_evaluate_finds_the_sample_site_in_the_sources_or_skips(refreshed, tmp_path, monkeypatch):
    from tests.flows.support import dead_url, write_sources

    refreshed.site.set_edition(1)
    monkeypatch.setenv("RETROFRESH_SOURCES", str(refreshed.sources))
    result = evaluate_freshness(store=str(refreshed.store), last_versions=1, output_dir=str(tmp_path))
    assert result["facts"] == len(refreshed.site.world.changed_facts(1)) and result["freshness"] > 0.5

    monkeypatch.setenv("RETROFRESH_SOURCES", str(write_sources(tmp_path / "other.yaml", dead_url())))
    state = evaluate_freshness(store=str(refreshed.store), return_state=True)
    assert state.is_completed() and state.result()["skipped"]
    assert "no sample site" in artifacts_of(flow_run_id(state))["freshness-summary"].data


def test_evaluate_freshness_with_a_local_checkpoint(refreshed, tmp_path, tiny_checkpoint):
    store = copy_store(refreshed.store, tmp_path / "store")
    result = evaluate_freshness(store=store, edition=1, checkpoint=str(tiny_checkpoint), output_dir=str(tmp_path / "eval"), last_versions=1)
    assert [row["current"] for row in result["versions"]] == [True]
    # A random tiny model prefers whatever it prefers; what must hold is that every changed fact
    # (each has an older value) was scored both ways.
    assert result["model_scored"] == result["facts"] == len(refreshed.site.world.changed_facts(1))
