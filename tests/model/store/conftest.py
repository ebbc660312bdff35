"""Store test helpers: deterministic clustered vectors, chunks, and a store on each backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model.contracts.chunking import Chunk
from model.contracts.embedder import EmbedderSpec
from model.contracts.ids import chunk_id, content_hash, doc_id
from model.store import IndexPolicy, Manifest, Store, open_store

DIM = 32
SPEC = EmbedderSpec(name="test-clusters", dim=DIM, sha256="0" * 64)
TOKENIZER = {"name": "test-bpe", "sha256": "1" * 64}
FLAT_MAX = 400  # small, so tests reach the IVF path with a few hundred vectors


class Corpus:
    """Documents whose chunk keys are clustered (never uniform) unit vectors, reproducibly.

    A chunk's vector depends only on (doc url, text version, position), so re-creating a document
    gives the same ids and the same keys, as a real embedder would.
    """

    def __init__(self, *, dim: int = DIM, clusters: int = 12, seed: int = 0):
        self.dim = dim
        self.centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32) * 2

    def _vector(self, key: str) -> np.ndarray:
        rng = np.random.default_rng(hash_key(key))
        v = self.centres[rng.integers(len(self.centres))] + rng.standard_normal(self.dim).astype(np.float32)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def doc(self, n: int, chunks: int = 4, *, edition: str = "a") -> tuple[list[Chunk], np.ndarray]:
        """Chunks and keys of document number n in a given edition (another edition: new ids)."""
        url = f"https://example.test/doc/{n}"
        did = doc_id(url)
        text = f"doc {n} edition {edition}"
        chash = content_hash(text)
        out, vectors = [], []
        for position in range(chunks):
            out.append(
                Chunk(
                    chunk_id=chunk_id(did, position, chash),
                    doc_id=did,
                    position=position,
                    tokens=[n % 251, position, 7],
                    continuation=[position + 1] * 3,
                    text=f"{text} chunk {position}",
                    url=url,
                )
            )
            vectors.append(self._vector(f"{url}|{edition}|{position}"))
        return out, np.stack(vectors)

    def docs(self, numbers, chunks: int = 4, *, edition: str = "a") -> tuple[list[Chunk], np.ndarray]:
        parts = [self.doc(n, chunks, edition=edition) for n in numbers]
        return [c for p in parts for c in p[0]], np.concatenate([p[1] for p in parts])

    def queries(self, n: int, *, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        q = self.centres[rng.integers(len(self.centres), size=n)] + rng.standard_normal((n, self.dim)).astype(np.float32)
        return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def hash_key(key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def next_manifest(store: Store, parent: Manifest | None, shards, tombstones=(), *, documents: int = 0, **kw) -> Manifest:
    """The next version's manifest on top of ``parent`` (unwritten)."""
    return Manifest.next(
        parent,
        version=kw.pop("version", None) or store.new_version_id(),
        embedder=kw.pop("embedder", SPEC),
        tokenizer=TOKENIZER,
        add_shards=list(shards),
        tombstones=tombstones,
        ledger=kw.pop("ledger", None),
        documents=documents,
        watermark=kw.pop("watermark", None),
        sources=["test"],
        **kw,
    )


def exact_top_k(vectors: np.ndarray, ids: list[int], queries: np.ndarray, k: int) -> list[list[int]]:
    """Brute-force reference: chunk ids of the k best inner products per query."""
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


@dataclass
class Published:
    manifest: Manifest
    chunks: list[Chunk]
    vectors: np.ndarray


@pytest.fixture
def corpus() -> Corpus:
    return Corpus()


@pytest.fixture
def store(store_uri: str, tmp_path: Path) -> Store:
    """An empty store (local directory or GCS emulator) with a small flat threshold.

    IVF lists keep exact vectors here, so searching with every list probed is exact and results
    can be compared with brute force; the default SQ8 codec has its own test.
    """
    return open_store(store_uri, cache_dir=tmp_path / "cache", policy=IndexPolicy(flat_max=FLAT_MAX, codec="Flat"))


def publish(store: Store, corpus: Corpus, numbers, *, parent: Manifest | None = None, chunks: int = 4, edition: str = "a",
            tombstones=(), lineage: str | None = None) -> Published:
    """Write one shard with documents ``numbers`` and publish it on top of ``parent``."""
    cs, vs = corpus.docs(numbers, chunks, edition=edition)
    shard = store.write_shard(cs, vs, embedder=SPEC, lineage=lineage)
    manifest = store.publish(next_manifest(store, parent, [shard], tombstones, documents=len(list(numbers))),
                             expected_current=parent.version if parent else None)
    return Published(manifest, cs, vs)
