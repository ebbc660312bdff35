"""From a store version to train/eval windows with precomputed neighbours (the data half of `retrofresh train`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.contracts.compat import Compatibility
from model.contracts.tokenizer import RetroTokenizer
from model.training.data import Document, SequenceSet, documents_from_view, plan_sequences, split_documents
from model.training.neighbours import neighbours_from_store, retokenizer

LOG = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: SequenceSet
    eval: SequenceSet
    info: dict  # store, version, data hash, counts: saved with the checkpoint


def prepare_from_view(
    view,
    embedder,
    tokenizer: RetroTokenizer,
    *,
    seq_len: int,
    k: int,
    chunk_tokens: int,
    neighbour_tokens: int,
    eval_fraction: float = 0.05,
    cache_dir: str | Path | None = None,
    store_tokenizer: RetroTokenizer | None = None,
    pad_id: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> PreparedData:
    """Build training windows from a store version and search every chunk's neighbours.

    Args:
        view: an opened store version.
        embedder: the version's embedder (queries are made exactly as its keys were).
        tokenizer: the model's tokenizer.
        seq_len: tokens per training window (a multiple of chunk_tokens).
        k: neighbours per chunk.
        chunk_tokens: m; must equal the version's chunk size.
        neighbour_tokens: r.
        eval_fraction: share of documents held out for evaluation, packed into windows of their own.
        cache_dir: neighbour cache directory (None: no cache).
        store_tokenizer: the store's tokenizer when it differs from the model's (RETRO-fitting).
        pad_id: padding token id.
        seed: the held-out split's seed.
        progress: show progress bars.

    Returns:
        Train and eval windows plus a description of the data.

    Raises:
        ValueError: the version's chunk size or tokenizer does not fit the model.
    """
    manifest = view.manifest
    index = Compatibility.of_manifest(manifest)
    model_terms = Compatibility.of(tokenizer=tokenizer, chunk_tokens=chunk_tokens, source="the model", kind="model")
    model_terms.check(index, terms=("chunk_tokens",), fix="train on a version chunked into chunks of the model's size")
    if store_tokenizer is None or store_tokenizer.sha256 != manifest.tokenizer.sha256:  # else neighbours are re-encoded
        model_terms.check(index, terms=("tokenizer",), fix="pass that tokenizer (--tokenizer)")
    docs = documents_from_view(view, tokenizer, store_tokenizer=store_tokenizer)
    if not docs:
        raise ValueError(f"version {view.version} has no live chunks to train on")
    train_docs, eval_docs = split_documents(docs, eval_fraction, seed=seed)

    def windows(side: list[Document]) -> tuple[SequenceSet, dict]:
        """Pack one side's documents and search every chunk's neighbours in the whole version."""
        plan = plan_sequences(side, tokenizer, seq_len=seq_len, chunk_tokens=chunk_tokens, pad_id=pad_id)
        ids, mask = neighbours_from_store(
            view, embedder, plan, k=k, r=neighbour_tokens, tokenizer_sha256=tokenizer.sha256, cache_dir=cache_dir,
            to_tokens=retokenizer(store_tokenizer, tokenizer), pad_id=pad_id, progress=progress,
        )
        counts = {"data_hash": plan.data_hash(), "documents": len(side), "chunks": len(plan.chunk_texts),
                  "sequences": plan.num_sequences, "chunks_with_neighbours": int(mask.any(axis=(1, 2)).sum())}
        return SequenceSet.from_plan(plan, ids, mask), counts

    train, train_counts = windows(train_docs)
    if eval_docs:
        evaluation, eval_counts = windows(eval_docs)
    else:
        evaluation, eval_counts = train.subset(torch.arange(0)), {"documents": 0, "sequences": 0}
    info = {
        "store": getattr(view, "store_uri", ""),
        "version": view.version,
        "documents": len(docs),
        "train_sequences": train_counts["sequences"],
        "eval_sequences": eval_counts["sequences"],
        "train": train_counts,
        "eval": eval_counts,
    }
    LOG.info("training data: %s", info)
    return PreparedData(train, evaluation, info)
