"""``retrofresh index``: status, versions, search (real embedder), rollback, compact, gc, errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from flows.cli import cli
from model.contracts.chunking import chunk_document
from model.contracts.ids import content_hash, doc_id
from model.contracts.tokenizer import RetroTokenizer
from model.store import IncompatibleIndex, Manifest
from model.store.retriever import StoreRetriever

from tests.fixtures.numerics import assert_close

from .conftest import publish

FACTS = {
    "https://facts.test/eiffel": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France, built in 1889.",
    "https://facts.test/photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "https://facts.test/markets": "Stock markets fell sharply on Monday as investors worried about rising interest rates.",
    "https://facts.test/volcano": "Mount Etna in Sicily is one of the most active volcanoes in Europe and erupts often.",
    "https://facts.test/chess": "Chess is a board game for two players; each begins with sixteen pieces on a square board.",
}


def run(*args: str) -> tuple[int, str]:
    """Exit code and stdout (or, on failure, stdout and stderr together)."""
    result = CliRunner().invoke(cli, ["index", *args], catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


@pytest.fixture(scope="module")
def embedder():
    from model.contracts.embedder import Embedder

    return Embedder()


@pytest.fixture
def facts_store(store, embedder):
    """A store whose one version holds real chunks of five short documents, embedded for real."""
    tok = RetroTokenizer.load()
    chunks = []
    for url, text in FACTS.items():
        chunks += chunk_document(tok.encode(text), doc_id=doc_id(url), url=url, content_hash=content_hash(text), tokenizer=tok)
    shard = store.write_shard(chunks, embedder.encode([c.text for c in chunks]), embedder=embedder.spec)
    manifest = Manifest.next(
        None, version=store.new_version_id(), embedder=embedder.spec, tokenizer={"name": tok.name, "sha256": tok.sha256},
        add_shards=[shard], tombstones=[], ledger=None, documents=len(FACTS), watermark=None, sources=["facts"],
    )
    store.publish(manifest, expected_current=None)
    return store


def test_search_embeds_the_query_and_finds_the_fact(facts_store, tmp_path):
    code, out = run("search", "--store", facts_store.uri, "--cache-dir", str(tmp_path / "c"), "Which city is the Eiffel Tower in?", "-k", "3", "--json")
    assert code == 0, out
    hits = json.loads(out)
    assert len(hits) == 3 and hits[0]["url"] == "https://facts.test/eiffel"
    assert set(hits[0]) >= {"chunk_id", "doc_id", "url", "score", "text"}
    assert hits[0]["score"] > hits[1]["score"] and "Eiffel" in hits[0]["text"]
    code, out = run("search", "--store", facts_store.uri, "--cache-dir", str(tmp_path / "c"), "volcano eruption in Italy")
    assert code == 0 and "https://facts.test/volcano" in out


def test_search_embeds_the_query_in_the_precision_asked(facts_store, tmp_path):
    hits = {}
    for precision in ("fp32", "bf16"):
        code, out = run("search", "--store", facts_store.uri, "--cache-dir", str(tmp_path / "c"), "Which city is the Eiffel Tower in?",
                        "-k", "5", "--json", "--precision", precision)
        assert code == 0, out
        hits[precision] = json.loads(out)
    assert [h["url"] for h in hits["bf16"]][:2] == [h["url"] for h in hits["fp32"]][:2]
    fp32, bf16 = ([h["score"] for h in hits[p]] for p in ("fp32", "bf16"))
    # bf16 autocast computes another vector (cosine >= 0.9999 to fp32's): the same ranking, scores equal only within bf16's rounding.
    assert bf16 != fp32
    assert_close(torch.tensor(bf16), torch.tensor(fp32), dtype=torch.bfloat16, magnitude=1.0)


def test_store_retriever(facts_store, embedder):
    with facts_store.open() as view:
        retriever = StoreRetriever(view, embedder)
        hits = retriever.retrieve(["plants make sugar from light", "a game with sixteen pieces"], 2,
                                  exclude_doc_ids=[None, doc_id("https://facts.test/chess")])
        assert hits[0][0].url == "https://facts.test/photosynthesis"
        assert all(h.url != "https://facts.test/chess" for h in hits[1]) and len(hits[1]) == 2
        assert retriever.retrieve([], 2) == [] and retriever.retrieve(["x"], 0) == [[]]
        assert hits[0][0].version == view.version


def test_store_retriever_refuses_another_embedder(store, corpus, embedder):
    publish(store, corpus, range(2))
    with store.open() as view:
        with pytest.raises(IncompatibleIndex, match="embedded with test-clusters"):
            StoreRetriever(view, embedder)


def test_status_versions_rollback_compact_gc(prefect_api, store, corpus, tmp_path):
    first = publish(store, corpus, range(4))
    second = publish(store, corpus, range(4, 6), parent=first.manifest, tombstones=[first.chunks[0].chunk_id])
    common = ["--store", store.uri, "--cache-dir", str(tmp_path / "c")]
    code, out = run("status", *common, "--json")
    status = json.loads(out)
    assert code == 0 and status["version"] == second.manifest.version
    assert (status["documents"], status["chunks"], status["shards"], status["tombstones"]) == (2, 23, 2, 1)
    assert {"created_at", "watermark"} <= set(status)
    code, out = run("status", *common)
    assert code == 0 and second.manifest.version in out and "shards" in out

    code, out = run("versions", *common, "--json")
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [first.manifest.version, second.manifest.version]
    assert [r["current"] for r in rows] == [False, True]

    code, out = run("rollback", first.manifest.version, *common)
    assert code == 0 and f"-> {first.manifest.version}" in out and store.current() == first.manifest.version
    code, out = run("rollback", second.manifest.version, *common, "--json")
    assert json.loads(out) == {"previous": first.manifest.version, "current": second.manifest.version}

    # The compaction flow: lease, validation (no probe: these keys come from no real encoder), publish.
    code, out = run("compact", "--store", store.uri, "--probe-queries", "0", "--log-file", str(tmp_path / "compact.log"), "--json")
    info = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and info["published"] and info["shards_after"] == 1 and info["chunks"] == 23
    assert store.current() == info["version"] and store.manifest().tombstones == []

    code, out = run("gc", *common, "--keep", "1", "--min-age", "0", "--dry-run", "--json")
    planned = json.loads(out)["deleted"]
    assert f"versions/{first.manifest.version}/manifest.json" in planned
    assert store.backend.exists(f"versions/{first.manifest.version}/manifest.json")
    code, out = run("gc", *common, "--keep", "1", "--min-age", "0", "--json")
    assert sorted(json.loads(out)["deleted"]) == sorted(planned)
    assert [m.version for m in store.versions()] == [info["version"]]


def test_compaction_while_a_refresh_holds_the_lease_fails_clearly_and_publishes_nothing(prefect_api, store, corpus, tmp_path):
    from flows.common.lease import RefreshLease

    first = publish(store, corpus, range(4))
    publish(store, corpus, range(4, 6), parent=first.manifest, tombstones=[first.chunks[0].chunk_id])
    current, written = store.current(), store.backend.list("versions/")
    lease = RefreshLease(store.backend, holder="a refresh flow run", ttl_s=600)
    lease.acquire()
    try:
        code, out = run("compact", "--store", store.uri, "--probe-queries", "0", "--log-file", str(tmp_path / "compact.log"))
    finally:
        lease.release()
    assert code == 1 and "compaction failed: the refresh lease" in out and "held by a refresh flow run" in out, out
    assert store.current() == current and store.backend.list("versions/") == written  # nothing published, no draft


def test_errors_say_how_to_fix(store, tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_STORE", raising=False)
    code, out = run("status", "--store", store.uri, "--cache-dir", str(tmp_path / "c"))
    assert code == 1 and "no CURRENT version yet" in out and "publish one first" in out
    code, out = run("status", "--store", "s3://bucket/x")
    assert code == 1 and "unknown store URI scheme 's3'" in out and "gs://bucket/prefix" in out
    code, out = run("status")
    assert code == 2 and "RETROFRESH_STORE" in out
    code, out = run("rollback", "v000009-dead", "--store", store.uri, "--cache-dir", str(tmp_path / "c"))
    assert code == 1 and "does not exist" in out
    code, out = run("--help")
    assert code == 0 and all(name in out for name in ("status", "versions", "search", "rollback", "compact", "gc"))


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00v000001", b"", b"\n", b"not a version\n"])
def test_a_damaged_current_is_reported_and_rollback_repairs_it(store, corpus, tmp_path, damage):
    first = publish(store, corpus, range(2))
    second = publish(store, corpus, range(2, 4), parent=first.manifest)
    store.backend.swap("CURRENT", damage, matches=lambda found: True)
    common = ["--store", store.uri, "--cache-dir", str(tmp_path / "c")]
    code, out = run("status", *common)
    assert code == 1 and "CURRENT" in out and "is damaged" in out and "Traceback" not in out
    assert "retrofresh index rollback VERSION" in out and second.manifest.version in out  # the newest, to repair with
    code, out = run("versions", *common, "--json")
    assert code == 0 and [r["version"] for r in json.loads(out)] == [first.manifest.version, second.manifest.version]
    code, out = run("rollback", second.manifest.version, *common)
    assert code == 0 and f"damaged ({damage!r}) -> {second.manifest.version}" in out, out
    assert store.current() == second.manifest.version
    code, out = run("status", *common, "--json")
    assert code == 0 and json.loads(out)["version"] == second.manifest.version


def test_search_refuses_an_index_from_another_embedder(store, corpus, tmp_path):
    publish(store, corpus, range(2))
    code, out = run("search", "--store", store.uri, "--cache-dir", str(tmp_path / "c"), "anything")
    assert code == 1 and "was embedded with test-clusters" in out and "--embedder" in out
