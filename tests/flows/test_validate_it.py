"""Validation's probe search: deleted means what the served view says it means."""

from __future__ import annotations

import numpy as np

from flows.tasks.validate import probe, sample_chunks
from model.store import IndexPolicy, open_store
from tests.model.store.conftest import FLAT_MAX, SPEC, Corpus, next_manifest


class KeysOf:
    """An embedder that knows the corpus: a chunk's text gives the key it was stored with."""

    def __init__(self, chunks, vectors):
        self.keys = {c.text: v for c, v in zip(chunks, vectors)}

    def encode(self, texts):
        return np.stack([self.keys[t] for t in texts])


def test_the_probe_counts_a_restored_document_as_live_and_a_hidden_copy_as_deleted(tmp_path):
    """Delete a document, restore it with the same content: its re-added chunks are no deleted hits."""
    store = open_store(tmp_path / "store", cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=FLAT_MAX, codec="Flat"))
    corpus = Corpus()
    chunks, vectors = corpus.docs([7, 20, 21, 22])
    restored, restored_vectors = corpus.doc(7)
    v1 = store.publish(next_manifest(store, None, [store.write_shard(chunks, vectors, embedder=SPEC)], documents=4), expected_current=None)
    v2 = store.publish(next_manifest(store, v1, [], [c.chunk_id for c in restored], documents=3), expected_current=v1.version)
    shard = store.write_shard(restored, restored_vectors, embedder=SPEC)
    v3 = store.publish(next_manifest(store, v2, [shard], documents=4), expected_current=v2.version)
    embedder = KeysOf(chunks, vectors)
    with store.open(v3.version) as view:
        sample = sample_chunks(view, 100, seed="all")
        assert len(sample) == 16
        recall, self_score, dead = probe(view, embedder, sample, k=8)
        assert (recall, dead) == (1.0, 0) and self_score > 0.99



def test_validation_probes_with_the_encoder_the_ingest_loaded(monkeypatch):
    """A long-lived process (``watch --refresh-here``, ``flows worker``) keeps one encoder between
    refreshes (Beam's Shared holds one per tag, and another tag replaces it): validation must reuse
    the one the ingest's handler loaded at the default precision, or each refresh loads it twice."""
    from beam_jobs.embed import ChunkEmbeddingHandler
    from flows.tasks.validate import probe_embedder
    from model.contracts.settings import get_settings

    monkeypatch.setenv("RETROFRESH_PRECISION", "auto")  # the default outside the tests, which pin fp32
    handler = ChunkEmbeddingHandler(None, max_length=128, precision=get_settings().precision)  # as a refresh's job builds it
    loaded = handler.load_model()
    assert probe_embedder(None, 128) is loaded
    assert handler.load_model() is loaded
