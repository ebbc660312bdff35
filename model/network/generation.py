"""Sampling from a RETRO model with a KV cache, retrieving once per completed 64-token chunk."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from model.contracts.precision import Decision, autocast
from model.contracts.retrieval import Neighbour, Retriever
from model.contracts.tokenizer import RetroTokenizer
from model.network.decoding import StaticDecoder
from model.network.retro import Retro, pack_neighbours

LOG = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """What :func:`generate` produced."""

    text: str  # the new text only
    token_ids: list[int]  # the new tokens only
    prompt_tokens: int
    neighbours: list[list[Neighbour]] = field(default_factory=list)  # one list per retrieval (completed chunk)
    retrievals: int = 0
    finish_reason: str = "length"  # "length" or "eos"


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from (B, V) logits.

    Args:
        logits: unnormalised scores of the next token.
        temperature: 0 picks the most likely token (so does any below 1.2e-38, float32's smallest
            normal number); higher flattens the distribution.
        top_k: keep only the k most likely tokens.
        top_p: keep the smallest set of tokens whose probability reaches top_p (nucleus); the
            most likely token always stays, however small top_p is.
        generator: source of randomness (seeded for reproducible samples).

    Returns:
        (B,) token ids.
    """
    # Every temperature >= 0 is served. Below float32's smallest normal number every token but the
    # best has probability 0 anyway (and the temperature itself may round to 0): greedy, its limit.
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(-1)
    # Shifted so the best token scores 0, a small temperature sends the others to -inf instead of
    # the best one to +inf (inf - inf = nan in the softmax).
    logits = logits.float()
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # tokens entirely past the nucleus
        drop[..., 0] = False  # the top one always stays, even when top_p rounds to 0 in float32
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, k: int) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def retrieve_chunks(
    retriever: Retriever,
    tokenizer: RetroTokenizer,
    chunks: list[list[int]],
    k: int,
    *,
    exclude_doc_ids: list[str | None] | None = None,
) -> list[list[Neighbour]]:
    """Neighbours for each chunk of token ids, queried with the chunk's decoded text (as keys were made)."""
    texts = [tokenizer.decode(chunk) for chunk in chunks]
    kwargs = {"exclude_doc_ids": exclude_doc_ids} if exclude_doc_ids is not None else {}
    found = retriever.retrieve(texts, k, **kwargs)
    if len(found) != len(texts):
        raise RuntimeError(f"retriever returned {len(found)} neighbour lists for {len(texts)} chunks")
    return [list(nbs) for nbs in found]


@torch.inference_mode()
def generate(
    model: Retro,
    tokenizer: RetroTokenizer,
    prompt: str,
    *,
    retriever: Retriever | None,
    k: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    to_tokens: Callable[[Neighbour], list[int]] | None = None,
    static_steps: bool | None = None,
    precision: str | Decision = "fp32",
) -> GenerationResult:
    """Continue a prompt.

    Every complete chunk of the prompt is retrieved for in one call, so the first generated chunk
    attends to the neighbours of the prompt's last complete chunk; after that, each time a
    generated token completes a chunk, its neighbours are retrieved, encoded once and cached.

    Args:
        model: the RETRO model.
        tokenizer: the model's tokenizer.
        prompt: text to continue; empty starts from the end-of-text token.
        retriever: where neighbours come from; None generates without retrieval.
        k: neighbours per chunk (default: the model's k).
        max_new_tokens: tokens to add at most.
        temperature: 0 for greedy decoding.
        top_k: sample among the k most likely tokens only.
        top_p: nucleus sampling threshold.
        seed: makes sampling reproducible.
        stop_at_eos: stop when the end-of-text token is sampled.
        to_tokens: a neighbour's token ids for this model; default its ``retrieved_tokens`` (set it
            when the store was chunked with another tokenizer, e.g. a RETRO-fitted model).
        static_steps: run tokens that complete no chunk through :class:`model.network.decoding.StaticDecoder`
            (replayed as CUDA graphs on a GPU); default: on for a RETRO model on CUDA. Same tokens.
        precision: "fp32" (the reference), "bf16" or "auto" (:mod:`model.contracts.precision`).

    Returns:
        The new text and tokens, and the neighbours used.

    Raises:
        ValueError: bad sampling settings, or a prompt that leaves no room for max_new_tokens.
    """
    cfg = model.config
    k = cfg.k if k is None else k
    _check_sampling(max_new_tokens, temperature, top_k, top_p, k)
    ids = tokenizer.encode(prompt)
    if not ids:
        if tokenizer.eos_id is None:
            raise ValueError("the prompt is empty and the tokenizer has no end-of-text token to start from")
        ids = [tokenizer.eos_id]
    if len(ids) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len={cfg.max_seq_len}"
        )
    m, r = cfg.chunk_tokens, cfg.neighbour_tokens
    device = next(model.parameters()).device
    if static_steps is None:
        static_steps = device.type == "cuda" and isinstance(model, Retro)
    elif static_steps and not isinstance(model, Retro):
        raise ValueError(f"static_steps needs a Retro model, not {type(model).__name__}")
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    result = GenerationResult(text="", token_ids=[], prompt_tokens=len(ids))
    if max_new_tokens == 0:
        return result
    was_training = model.training
    model.eval()

    def neighbours_for(chunks: list[list[int]]):
        if retriever is None or not chunks:
            return None, None
        found = retrieve_chunks(retriever, tokenizer, chunks, k)
        result.neighbours.extend(found)
        result.retrievals += len(found)
        rows = found if to_tokens is None else [[to_tokens(n) for n in nbs] for nbs in found]
        nb, mask = pack_neighbours(rows, k=k, r=r, pad_id=cfg.pad_token_id)
        return nb[None].to(device), mask[None].to(device)  # (1, L, k, r)

    with autocast(precision, device):
        try:
            cache = model.new_cache(1, len(ids) + max_new_tokens)
            prompt_chunks = [ids[u * m : (u + 1) * m] for u in range(len(ids) // m)]
            nb, mask = neighbours_for(prompt_chunks)
            logits = model(torch.tensor([ids], device=device), nb, mask, cache=cache)[:, -1]
            decoder = StaticDecoder(model, cache) if static_steps else None
            sequence = list(ids)
            while True:
                token = int(sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)[0])
                result.token_ids.append(token)
                sequence.append(token)
                if stop_at_eos and token == tokenizer.eos_id:
                    result.finish_reason = "eos"
                    break
                if len(result.token_ids) >= max_new_tokens:
                    break
                next_ids = torch.tensor([[token]], device=device)
                if len(sequence) % m == 0:  # this token completes a chunk: retrieve for it now
                    nb, mask = neighbours_for([sequence[-m:]])
                    logits = model(next_ids, nb, mask, cache=cache)[:, -1]
                elif decoder is not None:
                    logits = decoder(next_ids)
                else:
                    logits = model(next_ids, cache=cache)[:, -1]
        finally:
            model.train(was_training)
    new = result.token_ids[:-1] if result.finish_reason == "eos" else result.token_ids
    result.text = tokenizer.decode(new)
    return result
