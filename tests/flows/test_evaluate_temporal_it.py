"""The ``evaluate_temporal`` flow: the same numbers as the evaluation itself, its artifacts, and a clear failure."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from pydoc_data.topics import topics

from tests.flows.support import artifacts_of, flow_run_id

pytestmark = pytest.mark.integration

OLD = {f"https://docs.example/old/{n}": topics[n][:1000] for n in ("assert", "for")}
NEW = {f"https://docs.example/new/{n}": topics[n][:1000] for n in ("if", "while")}
EVAL = [
    {"text": topics["if"][:700], "published_at": "2024-05-02", "url": "https://docs.example/eval/if"},
    {"text": topics["while"][:700], "published_at": "2024-06-11", "url": "https://docs.example/eval/while"},
]


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, query_embedder):
    from model.contracts.tokenizer import RetroTokenizer
    from model.store.documents import publish_documents
    from model.store import open_store

    tokenizer = RetroTokenizer.load()
    root = tmp_path_factory.mktemp("temporal-flow")
    store = open_store(root / "store", cache_dir=root / "cache")
    stale = publish_documents(store, list(OLD.items()), tokenizer, query_embedder)
    fresh = publish_documents(store, list(NEW.items()), tokenizer, query_embedder)
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps(r) + "\n" for r in EVAL) + '{"text": "undated"}\n')
    return str(root / "store"), stale, fresh, docs, root


def test_the_flow_reports_what_the_evaluation_computes(prefect_api, two_versions, tiny_checkpoint, tmp_path, monkeypatch):
    from flows.evaluate_temporal import evaluate_temporal
    from model.evaluation.conditions import TemporalRequest, run_temporal

    store, stale, fresh, docs, root = two_versions
    monkeypatch.setenv("RETROFRESH_CACHE_DIR", str(root / "cache"))
    state = evaluate_temporal(docs=str(docs), stale_version=stale, checkpoint=str(tiny_checkpoint), store=store, bootstrap=50,
                              output_dir=str(tmp_path / "out"), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    direct = run_temporal(TemporalRequest(checkpoint=tiny_checkpoint, store=store, stale_version=stale, docs=docs, bootstrap=50, cache_dir=root / "cache"))
    def scores(conditions):  # without the scoring speed, which differs run to run
        return {name: {k: v for k, v in row.items() if k not in ("scoring_s", "tokens_per_s")} for name, row in conditions.items()}

    assert scores(result["conditions"]) == scores(direct["conditions"]) and result["versions"] == {"stale": stale, "fresh": fresh}
    assert all(row["tokens_per_s"] > 0 for row in result["conditions"].values())
    assert result["skipped"]["bad_date"] == 1 and [m["month"] for m in result["by_month"]] == ["2024-05", "2024-06"]
    outputs = {kind: Path(path) for kind, path in result["outputs"].items()}
    assert {p.name for p in outputs.values()} == {"temporal.json", "report.md", "temporal.png"}
    artifacts = artifacts_of(flow_run_id(state))
    assert {"temporal-conditions", "temporal-overlap", "temporal-report"} <= set(artifacts)
    table = artifacts["temporal-conditions"].data
    assert all(name in str(table) for name in ("none", "stale", "fresh")) and stale in str(table)
    assert "0.125" in str(artifacts["temporal-overlap"].data)
    assert base64.b64encode(outputs["plot"].read_bytes()).decode() in artifacts["temporal-report"].data


def test_the_flow_fails_on_an_unknown_version_with_the_fix(prefect_api, two_versions, tiny_checkpoint, monkeypatch):
    from flows.evaluate_temporal import evaluate_temporal

    store, _, _, docs, root = two_versions
    monkeypatch.setenv("RETROFRESH_CACHE_DIR", str(root / "cache"))
    state = evaluate_temporal(docs=str(docs), stale_version="v00000001-missing", checkpoint=str(tiny_checkpoint), store=store, return_state=True)
    assert state.is_failed() and "does not exist" in state.message and "index versions" in state.message
    monkeypatch.delenv("RETROFRESH_CHECKPOINT", raising=False)
    state = evaluate_temporal(docs=str(docs), stale_version="v1", store=store, return_state=True)
    assert state.is_failed() and "no checkpoint given" in state.message
