"""Recall tuned per version: the smallest nprobe whose recall@k against exact search meets the target."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from model.commands.index import index as index_cli
from model.store import IndexPolicy, open_store
from model.store.tuning import _others, recall_at_k

from .conftest import SPEC, Corpus, next_manifest, publish
from tests.fixtures.numerics import assert_close


@pytest.fixture
def ivf_store(tmp_path, corpus):
    """A version of three IVF shards (one lineage, 64 lists) probed with nprobe 1."""
    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=400, codec="Flat", nlist=64))
    corpus = Corpus(clusters=40, seed=3)
    chunks, vectors = corpus.docs(range(900))
    lineage = store.train_lineage(vectors, embedder=SPEC)
    infos = [store.write_shard([chunks[i] for i in part], vectors[part], embedder=SPEC, lineage=lineage)
             for part in np.array_split(np.arange(len(chunks)), 3)]
    first = store.publish(next_manifest(store, None, infos, search={"nprobe": 1}), expected_current=None)
    manifest = store.publish(next_manifest(store, first, [], tombstones=[chunks[0].chunk_id]), expected_current=first.version)
    return store, manifest


def recall_with(view, nprobe: int, k: int = 2, n: int = 200) -> float:
    own, keys = view.sample_keys(n, seed=7)
    truth = _others(view.search_ids(keys, k + 1, nprobe=view.max_nlist), own, k)
    return recall_at_k(_others(view.search_ids(keys, k + 1, nprobe=nprobe), own, k), truth)


def test_tuning_finds_the_smallest_nprobe_meeting_the_target(ivf_store):
    store, manifest = ivf_store
    result = store.tune(target=0.95)
    # The estimate must clear the target by one standard error of 200 probes.
    assert result.goal == pytest.approx(0.95 + (0.95 * 0.05 / result.queries) ** 0.5) and result.queries == 200
    assert result.met and result.recall >= result.goal and 1 < result.nprobe < 64
    assert dict(result.curve)[result.nprobe] == result.recall
    below = [r for p, r in result.curve if p < result.nprobe]
    assert below and max(below) < result.goal  # every smaller nprobe tried misses it
    assert dict(result.curve).get(result.nprobe - 1, 0) < result.goal  # and the one just below was tried
    with store.open() as view:
        own, keys = view.sample_keys(50, seed=1)
        assert manifest.tombstones[0] not in set(own.tolist())  # never a tombstoned chunk
        assert recall_with(view, 64) == 1.0  # every list probed is the reference itself
    harder = store.tune(target=0.999)
    assert harder.nprobe >= result.nprobe


def test_exact_shards_need_no_tuning(store, corpus):
    first = publish(store, corpus, range(20))  # one flat shard
    result = store.tune(target=0.99)
    assert (result.nprobe, result.recall, result.met) == (first.manifest.search.nprobe, 1.0, True)


def test_validation_writes_the_tuned_nprobe_into_a_copy_to_publish(ivf_store):
    from flows.tasks.validate import validate

    store, manifest = ivf_store
    chunks, vectors = Corpus(clusters=40, seed=3).docs(range(900, 910))
    delta = store.write_shard(chunks, vectors, embedder=SPEC)
    draft = next_manifest(store, manifest, [delta], documents=10)
    store.write_manifest(draft)
    report = validate(store, draft.version, parent=manifest.version, probe_queries=0, recall_target=0.95)
    assert report.publish != draft.version and report.nprobe > 1 and report.recall_at_k >= 0.95
    tuned = store.manifest(report.publish)
    assert tuned.search.nprobe == report.nprobe and tuned.parent == draft.parent == manifest.version
    assert tuned.shards == draft.shards and tuned.tombstones == draft.tombstones
    assert store.manifest(draft.version).search.nprobe == 1  # the draft is never rewritten
    again = validate(store, report.publish, parent=manifest.version, probe_queries=0, recall_target=0.95)
    assert again.publish == report.publish  # already tuned: nothing new written
    store.publish(report.publish, expected_current=manifest.version)
    with store.open() as view:
        assert view.manifest.search.nprobe == report.nprobe


def test_index_tune_command_publishes_a_tuned_version(ivf_store, tmp_path):
    store, manifest = ivf_store
    runner = CliRunner()
    result = runner.invoke(index_cli, ["tune", "--store", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["published"] and info["nprobe"] > info["nprobe_before"] == 1 and info["recall"] >= 0.95
    fresh = open_store(tmp_path / "store", cache_dir=tmp_path / "cache")
    assert fresh.current() == info["tuned_version"] and fresh.manifest().parent == manifest.version
    assert fresh.manifest().search.nprobe == info["nprobe"]
    again = runner.invoke(index_cli, ["tune", "--store", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache")])
    assert again.exit_code == 0 and "nothing written" in again.output
    bad = runner.invoke(index_cli, ["tune", "--store", str(tmp_path / "store"), "--target", "1.5"])
    assert bad.exit_code == 2 and "1.5" in bad.output


def test_any_version_id_can_be_tuned(ivf_store):
    store, manifest = ivf_store
    odd = manifest.retuned(version="hand-made-1", nprobe=1, parent=manifest.version)  # not v{seq}-{hex}
    store.write_manifest(odd)
    assert store.tune("hand-made-1").met


def test_the_score_error_model_matches_what_sq_codes_do():
    import faiss

    from model.store.faiss_index import score_error_std

    corpus = Corpus(clusters=20, seed=5)
    _, keys = corpus.docs(range(1000))
    queries = corpus.queries(50, seed=9)
    for codec, flat in (("SQ8", False), ("SQ4", False), ("Flat", True)):
        index = faiss.index_factory(keys.shape[1], f"IVF16,{codec}", faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
        decoded = index.sa_decode(index.sa_encode(keys))  # what search scores against
        errors = queries @ (keys - decoded).T  # (queries, keys): exact minus coded score
        predicted = score_error_std(index, queries)
        if flat:
            assert_close(errors, np.zeros_like(errors), magnitude=1.0)  # unit keys and queries: scores of magnitude 1
            assert not predicted.any()
            continue
        ratio = errors.std(axis=1) / predicted
        assert 0.8 < np.median(ratio) < 1.25, (codec, np.median(ratio))


def test_tuning_counts_the_codec_error_so_fresh_queries_get_the_recall(tmp_path):
    # SQ4 codes are coarse enough that ranking by them loses recall no nprobe buys back: tuning
    # must report that ceiling, and its estimate must be what held-out queries see against exact
    # search over the float keys (measured against exhaustive search of the codes it was 1.0).
    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=400, codec="SQ4", nlist=32))
    corpus = Corpus(clusters=40, seed=3)
    chunks, vectors = corpus.docs(range(1500))
    lineage = store.train_lineage(vectors, embedder=SPEC)
    infos = [store.write_shard([chunks[i] for i in part], vectors[part], embedder=SPEC, lineage=lineage)
             for part in np.array_split(np.arange(len(chunks)), 3)]
    # A fixed version id: the probe sample is seeded by it.
    store.publish(next_manifest(store, None, infos, search={"nprobe": 1}, version="v000001-00c0dec0"), expected_current=None)
    result = store.tune(target=0.95)
    assert not result.met and result.ceiling < 0.8 and dict(result.curve)[32] == result.ceiling
    assert result.recall >= result.ceiling - 0.005
    queries = corpus.queries(400, seed=5)
    ids = np.array([c.chunk_id for c in chunks])
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :2]]
    with store.open() as view:
        for nprobe in (result.nprobe, 32):
            measured = recall_at_k(view.search_ids(queries, 2, nprobe=nprobe), truth)
            assert abs(dict(result.curve)[nprobe] - measured) < 0.04, (nprobe, dict(result.curve)[nprobe], measured)
