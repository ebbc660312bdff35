"""Neighbours for every training chunk, searched once through the store and cached on disk.

The cache is keyed by (data hash, index version, embedder, k, r, tokenizer), stored as
safetensors (no pickle): re-running training on the same data and index reads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from model.contracts.compat import Compatibility
from model.contracts.retrieval import Neighbour
from model.training.data import ChunkPlan

LOG = logging.getLogger(__name__)

SearchFn = Callable[[np.ndarray, int, Sequence[str | None]], list[list[Neighbour]]]


def cache_key(*, data_hash: str, index_version: str, embedder: dict, k: int, r: int, tokenizer_sha256: str) -> str:
    """A stable hex key for one precomputation."""
    payload = {"data": data_hash, "index": index_version, "embedder": embedder, "k": k, "r": r, "tokenizer": tokenizer_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class NeighbourCache:
    """A directory of ``neighbours-<key>.safetensors`` files."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"neighbours-{key[:24]}.safetensors"

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        from safetensors.numpy import load_file

        path = self.path(key)
        if not path.exists():
            return None
        data = load_file(str(path))
        LOG.info("neighbours read from cache %s", path)
        return data["ids"], data["mask"]

    def save(self, key: str, ids: np.ndarray, mask: np.ndarray) -> Path:
        from safetensors.numpy import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(".tmp")
        save_file({"ids": ids, "mask": mask}, str(tmp), metadata={"key": key})
        tmp.replace(path)  # a crash never leaves a half-written cache entry under the real name
        return path


def precompute_neighbours(
    plan: ChunkPlan,
    *,
    embed: Callable[[list[str]], np.ndarray],
    search: SearchFn,
    k: int,
    r: int,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
    pad_id: int = 0,
    batch_size: int = 512,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Search k neighbours for every chunk of a plan, excluding its own document.

    Args:
        plan: the training windows.
        embed: chunk texts → (n, dim) float32 query vectors (the store's embedder).
        search: ``(vectors, k, exclude_doc_ids) -> neighbours per query`` (a store view's search).
        k: neighbours per chunk.
        r: tokens kept per neighbour (chunk + continuation).
        to_tokens: a neighbour's token ids for the model; default its ``retrieved_tokens``.
        pad_id: written into empty slots.
        batch_size: chunks per embedding/search call.
        progress: show a progress bar.

    Returns:
        ``(ids, mask)``: int32 (C, k, r) and bool (C, k, r) for the plan's C chunks in order.
    """
    to_tokens = to_tokens or (lambda nb: nb.retrieved_tokens)
    n = len(plan.chunk_texts)
    ids = np.full((n, k, r), pad_id, dtype=np.int32)
    mask = np.zeros((n, k, r), dtype=bool)
    todo = [i for i, text in enumerate(plan.chunk_texts) if text]  # padding chunks have no query
    starts = range(0, len(todo), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="neighbours", unit="batch")
    found_any = 0
    for start in starts:
        rows = todo[start : start + batch_size]
        vectors = embed([plan.chunk_texts[i] for i in rows])
        results = search(vectors, k, [plan.chunk_doc_ids[i] for i in rows])
        if len(results) != len(rows):
            raise RuntimeError(f"search returned {len(results)} lists for {len(rows)} queries")
        for i, neighbours in zip(rows, results):
            for j, nb in enumerate(neighbours[:k]):
                if nb.doc_id == plan.chunk_doc_ids[i]:
                    raise RuntimeError(f"search returned a neighbour from the query's own document {nb.doc_id}")
                tokens = to_tokens(nb)[:r]
                ids[i, j, : len(tokens)] = tokens
                mask[i, j, : len(tokens)] = True
                found_any += 1
    LOG.info("precomputed %d neighbours for %d chunks (k=%d)", found_any, len(todo), k)
    return ids, mask


def retokenizer(store_tokenizer, model_tokenizer) -> Callable[[Neighbour], list[int]] | None:
    """Re-encode neighbours with the model's tokenizer when the store was built with another one."""
    if store_tokenizer is None or store_tokenizer.sha256 == model_tokenizer.sha256:
        return None
    return lambda nb: model_tokenizer.encode(store_tokenizer.decode(nb.retrieved_tokens))


def neighbours_from_store(
    view,
    embedder,
    plan: ChunkPlan,
    *,
    k: int,
    r: int,
    tokenizer_sha256: str,
    cache_dir: str | Path | None,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
    pad_id: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`precompute_neighbours` through a store version, read from / written to the cache.

    Args:
        view: an opened store version (``search``, ``manifest``).
        embedder: a :class:`model.contracts.embedder.Embedder` matching the version's.
        plan: the training windows.
        k: neighbours per chunk.
        r: tokens per neighbour.
        tokenizer_sha256: the model tokenizer's hash (part of the cache key).
        cache_dir: where cached results live; None disables the cache.
        to_tokens: see :func:`precompute_neighbours`.
        pad_id: written into empty slots.
        progress: show progress bars.

    Returns:
        ``(ids, mask)`` as :func:`precompute_neighbours`.
    """
    Compatibility.of(embedder=embedder.spec, source="the embedder given", kind="run").check(
        Compatibility.of_manifest(view.manifest), terms=("embedder",), fix="pass the embedder that made the index's keys"
    )
    key = cache_key(
        data_hash=plan.data_hash(), index_version=view.manifest.version, embedder=embedder.spec.to_dict(),
        k=k, r=r, tokenizer_sha256=tokenizer_sha256,
    )
    cache = NeighbourCache(cache_dir) if cache_dir is not None else None
    if cache is not None and (hit := cache.load(key)) is not None:
        return hit
    ids, mask = precompute_neighbours(
        plan,
        embed=lambda texts: embedder.encode(texts, progress=False),
        search=lambda vectors, kk, exclude: view.search(vectors, kk, exclude_doc_ids=list(exclude)),
        k=k, r=r, to_tokens=to_tokens, pad_id=pad_id, progress=progress,
    )
    if cache is not None:
        LOG.info("neighbours cached at %s", cache.save(key, ids, mask))
    return ids, mask
