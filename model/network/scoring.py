"""Loss and bits-per-byte of a text under a RETRO model, with retrieval on or off and leakage control (per token, per chunk overlap)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

from model.contracts.precision import Decision, autocast
from model.contracts.retrieval import Neighbour, Retriever
from model.contracts.tokenizer import RetroTokenizer
from model.network.generation import retrieve_chunks
from model.network.retro import IGNORE_INDEX, Retro, pack_neighbours

LOG = logging.getLogger(__name__)

# With n-gram exclusion, ask for this many times k so that k usually survive the filter.
OVERFETCH = 4


@dataclass
class ScoreResult:
    """How well the model predicts a text."""

    loss: float  # mean nats per predicted token
    bits_per_byte: float  # total bits / UTF-8 bytes of the predicted tokens
    tokens: int  # predicted tokens (all but the first)
    bytes: int
    retrieval: bool
    neighbours_excluded: int = 0  # dropped for sharing an n-gram with the chunk they help predict
    neighbours_used: int = 0


def ngrams(tokens: list[int], n: int) -> set[tuple[int, ...]]:
    """All n-grams of a token list (empty when it is shorter than n)."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def longest_common_run(a: list[int], b: list[int]) -> int:
    """Length of the longest run of tokens that ``a`` and ``b`` share contiguously (RETRO's chunk overlap).

    Computed along the diagonals of the equality matrix, one row of ``a`` at a time (vectorised
    over ``b``): O(len(a) * len(b)) comparisons, no Python loop over ``b``.
    """
    if not a or not b:
        return 0
    import numpy as np

    right = np.asarray(b)
    run = np.zeros(len(right) + 1, dtype=np.int32)  # run[j + 1]: common run ending at a[i], b[j]
    best = 0
    for token in a:
        equal = right == token
        run[1:] = np.where(equal, run[:-1] + 1, 0)
        best = max(best, int(run.max()))
    return best


def filter_leaks(
    neighbours: list[Neighbour],
    target: list[int],
    n: int,
    k: int,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
) -> tuple[list[Neighbour], int]:
    """Drop neighbours that share an n-gram of length >= n with the tokens they help predict.

    Args:
        neighbours: candidates for one chunk, best first.
        target: the tokens predicted while attending to them (the next chunk).
        n: n-gram length; sharing any longer common substring implies sharing one of length n.
        k: neighbours to keep at most.
        to_tokens: a neighbour's tokens in the target's vocabulary; default ``retrieved_tokens``.

    Returns:
        The first k survivors and how many candidates were dropped.
    """
    to_tokens = to_tokens or (lambda nb: nb.retrieved_tokens)
    grams = ngrams(target, n)
    kept = [nb for nb in neighbours if not (grams & ngrams(to_tokens(nb), n))]
    return kept[:k], len(neighbours) - len(kept)


def chunk_neighbours(
    retriever: Retriever,
    tokenizer: RetroTokenizer,
    ids: list[int],
    *,
    chunk_tokens: int,
    fetch: int,
    exclude_doc_id: str | None = None,
    is_excluded: Callable[[Neighbour], bool] | None = None,
) -> list[list[Neighbour]]:
    """Candidates for every complete chunk of a token list, best first, leaks by document removed.

    Args:
        retriever: the neighbour source.
        tokenizer: decodes each chunk into its query text.
        ids: the text's tokens.
        chunk_tokens: m.
        fetch: candidates asked for per chunk (ask for more than k when a filter follows).
        exclude_doc_id: the retriever never returns this document.
        is_excluded: drops more candidates afterwards (another id or URL of the same document).

    Returns:
        One list per complete chunk.
    """
    n_chunks = len(ids) // chunk_tokens
    if not n_chunks:
        return []
    chunks = [ids[u * chunk_tokens : (u + 1) * chunk_tokens] for u in range(n_chunks)]
    found = retrieve_chunks(retriever, tokenizer, chunks, fetch, exclude_doc_ids=[exclude_doc_id] * n_chunks if exclude_doc_id else None)
    if is_excluded is not None:
        found = [[nb for nb in nbs if not is_excluded(nb)] for nbs in found]
    return found


@torch.inference_mode()
def token_losses(
    model: Retro,
    ids: list[int],
    found: list[list[Neighbour]] | None,
    *,
    k: int,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
    precision: str | Decision = "fp32",
) -> torch.Tensor:
    """Nats of every predicted token of ``ids`` (all but the first), chunk ``u`` reading ``found[u]``.

    Texts longer than the model's context are scored in consecutive chunk-aligned windows (each
    window's last token predicts the next window's first), so every token but the first counts.

    Args:
        model: the RETRO model.
        ids: the tokens (at least two).
        found: per complete chunk, its neighbours (the first k are used); None: retrieval off.
        k: neighbours per chunk.
        to_tokens: a neighbour's token ids for this model (default its ``retrieved_tokens``).
        precision: "fp32" (the reference), "bf16" or "auto" (:mod:`model.contracts.precision`).

    Returns:
        float tensor (len(ids) - 1,) on the CPU: entry j is the loss of predicting ``ids[j + 1]``.
    """
    cfg = model.config
    m, r = cfg.chunk_tokens, cfg.neighbour_tokens
    device = next(model.parameters()).device
    neighbours = mask = None
    if found is not None and len(ids) // m:
        rows = [nbs[:k] for nbs in found] if to_tokens is None else [[to_tokens(nb) for nb in nbs[:k]] for nbs in found]
        neighbours, mask = pack_neighbours(rows, k=k, r=r, pad_id=cfg.pad_token_id)
        neighbours, mask = neighbours.to(device), mask.to(device)
    window = cfg.max_seq_len - cfg.max_seq_len % m  # chunk-aligned so neighbours line up
    targets_all = torch.tensor(ids[1:] + [IGNORE_INDEX], device=device)
    tokens_all = torch.tensor(ids, device=device)
    losses = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(ids), window):
            x = tokens_all[None, start : start + window]
            y = targets_all[None, start : start + window]
            nb = mk = None
            if neighbours is not None:
                lo, hi = start // m, (start + x.shape[1]) // m
                nb, mk = neighbours[None, lo:hi], mask[None, lo:hi]
            with autocast(precision, device):
                logits = model(x, nb, mk)
            valid = y != IGNORE_INDEX
            losses.append(torch.nn.functional.cross_entropy(logits[valid].float(), y[valid], reduction="none").cpu())
    finally:
        model.train(was_training)
    return torch.cat(losses)


def drop_leaking(
    found: list[list[Neighbour]],
    ids: list[int],
    *,
    chunk_tokens: int,
    n: int,
    k: int,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
) -> tuple[list[list[Neighbour]], int]:
    """Per chunk, the first k candidates that share no n-gram with the chunk they help predict (the next one).

    Returns:
        The kept neighbours per chunk and how many candidates were dropped in all.
    """
    kept, excluded = [], 0
    for u, nbs in enumerate(found):
        survivors, dropped = filter_leaks(nbs, ids[(u + 1) * chunk_tokens : (u + 2) * chunk_tokens], n, k, to_tokens)
        kept.append(survivors)
        excluded += dropped
    return kept, excluded


def predicted_bytes(tokenizer: RetroTokenizer, ids: list[int], text: str | None = None) -> int:
    """UTF-8 bytes of the predicted tokens (all but the first): the bits-per-byte denominator."""
    whole = text if text is not None else tokenizer.decode(ids)
    return len(whole.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))


def score(
    model: Retro,
    tokenizer: RetroTokenizer,
    text: str,
    *,
    retriever: Retriever | None,
    k: int | None = None,
    exclude_doc_id: str | None = None,
    exclude_ngram: int | None = None,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
    precision: str | Decision = "fp32",
) -> ScoreResult:
    """Score a text.

    Texts longer than the model's context are scored in consecutive chunk-aligned windows (each
    window's last token predicts the next window's first), so every token but the first counts.

    Args:
        model: the RETRO model.
        tokenizer: its tokenizer.
        text: what to score (at least two tokens).
        retriever: neighbours source; None scores without retrieval.
        k: neighbours per chunk (default: the model's k).
        exclude_doc_id: never use neighbours from this document (the text's own source).
        exclude_ngram: drop neighbours sharing an n-gram of this length with the chunk they help predict.
        to_tokens: a neighbour's token ids for this model (see :func:`model.network.generation.generate`).
        precision: "fp32" (the reference), "bf16" or "auto" (:mod:`model.contracts.precision`).

    Returns:
        Loss, bits per byte and counts.

    Raises:
        ValueError: a text under two tokens, or a bad k / n.
    """
    cfg = model.config
    k = cfg.k if k is None else k
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if exclude_ngram is not None and exclude_ngram < 1:
        raise ValueError(f"exclude_ngram must be >= 1, got {exclude_ngram}")
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise ValueError(f"text has {len(ids)} token(s); scoring needs at least 2")
    m = cfg.chunk_tokens
    excluded = used = 0
    found = None
    if retriever is not None and len(ids) // m:
        fetch = k * OVERFETCH if exclude_ngram else k
        found = chunk_neighbours(retriever, tokenizer, ids, chunk_tokens=m, fetch=fetch, exclude_doc_id=exclude_doc_id)
        if exclude_ngram:
            found, excluded = drop_leaking(found, ids, chunk_tokens=m, n=exclude_ngram, k=k, to_tokens=to_tokens)
        used = sum(min(len(nbs), k) for nbs in found)
    total_nats = float(token_losses(model, ids, found, k=k, to_tokens=to_tokens, precision=precision).sum())
    tokens = len(ids) - 1
    n_bytes = predicted_bytes(tokenizer, ids, text)
    return ScoreResult(
        loss=total_nats / tokens,
        bits_per_byte=total_nats / math.log(2) / max(n_bytes, 1),
        tokens=tokens,
        bytes=n_bytes,
        retrieval=found is not None,
        neighbours_excluded=excluded,
        neighbours_used=used,
    )
