"""Training sequences: documents cut into chunk-aligned windows, with each chunk's text and document.

Each document is padded to a whole number of chunks and the documents are packed end to end,
so every window's chunks are exactly the document chunks the store holds (same tokens, same
text): a chunk's neighbours are searched with the very text its key was made from.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from model.contracts.tokenizer import RetroTokenizer
from model.network.retro import IGNORE_INDEX

LOG = logging.getLogger(__name__)


@dataclass
class Document:
    """A document's tokens, as the model's tokenizer cuts them."""

    doc_id: str
    tokens: list[int]


@dataclass
class ChunkPlan:
    """Documents packed into fixed windows; one row per chunk of the packed stream."""

    inputs: np.ndarray  # (S, T) int64 token ids
    targets: np.ndarray  # (S, T) int64 next-token ids, IGNORE_INDEX on padding and document starts
    chunk_texts: list[str]  # S·L texts, in window order: the retrieval queries
    chunk_doc_ids: list[str]  # S·L: the document each chunk is from (excluded from its neighbours)
    seq_doc_ids: list[set[str]]  # per window: the documents it covers
    chunk_tokens: int
    chunk_doc_end: np.ndarray  # (S·L,) int64: stream index where each chunk's document ends (its start for padding)

    @property
    def num_sequences(self) -> int:
        return self.inputs.shape[0]

    def data_hash(self) -> str:
        """sha256 of everything that decides which neighbours each chunk gets."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.inputs).tobytes())
        for doc, text in zip(self.chunk_doc_ids, self.chunk_texts):
            digest.update(doc.encode() + b"\x00" + text.encode() + b"\x01")
        return digest.hexdigest()


def documents_from_texts(texts: Iterable[tuple[str, str]], tokenizer: RetroTokenizer) -> list[Document]:
    """Tokenise (doc_id, text) pairs; empty documents are dropped."""
    docs = [Document(doc_id, tokenizer.encode(text)) for doc_id, text in texts]
    return [d for d in docs if d.tokens]


def documents_from_view(view, tokenizer: RetroTokenizer, *, store_tokenizer: RetroTokenizer | None = None) -> list[Document]:
    """Rebuild the live documents of a store version from its chunks.

    Args:
        view: an opened store version (``iter_chunks()`` yields pyarrow RecordBatches with
            doc_id, position, tokens, text).
        tokenizer: the model's tokenizer.
        store_tokenizer: the tokenizer the store was built with, when it differs from the model's
            (RETRO-fitting a pretrained model): documents are re-tokenised from their text.

    Returns:
        Documents sorted by doc_id, chunks in position order.
    """
    rows: dict[str, list[tuple[int, list[int], str]]] = defaultdict(list)
    for batch in view.iter_chunks():
        cols = batch.to_pydict()
        for doc, pos, toks, text in zip(cols["doc_id"], cols["position"], cols["tokens"], cols["text"]):
            rows[doc].append((int(pos), list(toks), text))
    retokenize = store_tokenizer is not None and store_tokenizer.sha256 != tokenizer.sha256
    docs = []
    for doc in sorted(rows):
        parts = sorted(rows[doc], key=lambda row: row[0])
        if retokenize:
            tokens = tokenizer.encode(store_tokenizer.decode([t for _, toks, _ in parts for t in toks]))
        else:
            tokens = [t for _, toks, _ in parts for t in toks]
        if tokens:
            docs.append(Document(doc, tokens))
    LOG.info("rebuilt %d documents (%d tokens) from the store", len(docs), sum(len(d.tokens) for d in docs))
    return docs


def plan_sequences(
    docs: Sequence[Document],
    tokenizer: RetroTokenizer,
    *,
    seq_len: int,
    chunk_tokens: int = 64,
    pad_id: int | None = None,
) -> ChunkPlan:
    """Pack documents into windows of seq_len tokens aligned to chunk boundaries.

    Args:
        docs: the corpus.
        tokenizer: decodes each chunk's text (the retrieval query).
        seq_len: tokens per window; a multiple of chunk_tokens.
        chunk_tokens: m.
        pad_id: fills each document's last chunk; default: the tokenizer's pad (else 0).

    Returns:
        The windows, their targets and per-chunk texts and document ids.

    Raises:
        ValueError: seq_len not a multiple of chunk_tokens, or no tokens at all.
    """
    m = chunk_tokens
    if seq_len <= 0 or seq_len % m:
        raise ValueError(f"seq_len {seq_len} must be a positive multiple of chunk_tokens {m}")
    pad = pad_id if pad_id is not None else (tokenizer.pad_id if tokenizer.pad_id is not None else 0)
    stream, target, texts, chunk_docs, doc_ends = [], [], [], [], []
    for doc in docs:
        n = len(doc.tokens)
        padded = -(-n // m) * m
        doc_ends.extend([len(stream) + n] * (padded // m))
        stream.extend(doc.tokens + [pad] * (padded - n))
        # Nothing predicts a document's first token, nor anything past its last one.
        target.extend(doc.tokens[1:] + [IGNORE_INDEX] * (padded - n + 1))
        for start in range(0, n, m):
            texts.append(tokenizer.decode(doc.tokens[start : start + m]))
            chunk_docs.append(doc.doc_id)
    if not stream:
        raise ValueError("no tokens to train on: every document is empty")
    total = -(-len(stream) // seq_len) * seq_len
    extra = total - len(stream)
    stream += [pad] * extra
    target += [IGNORE_INDEX] * extra
    for _ in range(extra // m):  # whole padding chunks at the end: no document, empty query
        doc_ends.append(len(texts) * m)
        texts.append("")
        chunk_docs.append("")
    inputs = np.asarray(stream, dtype=np.int64).reshape(-1, seq_len)
    targets = np.asarray(target, dtype=np.int64).reshape(-1, seq_len)
    L = seq_len // m
    seq_docs = [set(d for d in chunk_docs[s * L : (s + 1) * L] if d) for s in range(inputs.shape[0])]
    return ChunkPlan(inputs, targets, texts, chunk_docs, seq_docs, m, np.asarray(doc_ends, dtype=np.int64))


@dataclass
class SequenceSet:
    """Training windows with precomputed neighbours, ready to batch."""

    inputs: torch.Tensor  # (S, T) long
    targets: torch.Tensor  # (S, T) long
    neighbours: torch.Tensor | None = None  # (S, L, k, r) int32
    neighbour_mask: torch.Tensor | None = None  # (S, L, k, r) bool
    doc_end: torch.Tensor | None = None  # (S, L) int64: where each chunk's document ends in inputs.view(-1)

    def __post_init__(self):
        if self.inputs.shape != self.targets.shape:
            raise ValueError(f"inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} differ")
        if (self.neighbours is None) != (self.neighbour_mask is None):
            raise ValueError("give neighbours and neighbour_mask together")
        if self.neighbours is not None and self.neighbours.shape[0] != self.inputs.shape[0]:
            raise ValueError(f"{self.neighbours.shape[0]} neighbour rows for {self.inputs.shape[0]} sequences")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def tokens_per_sequence(self) -> int:
        return self.inputs.shape[1]

    @classmethod
    def from_plan(cls, plan: ChunkPlan, neighbours: np.ndarray | None = None, mask: np.ndarray | None = None) -> "SequenceSet":
        """Attach per-chunk neighbours (S·L, k, r) to a plan's windows."""
        S, T = plan.inputs.shape
        L = T // plan.chunk_tokens
        nb = mk = None
        if neighbours is not None:
            nb = torch.from_numpy(np.ascontiguousarray(neighbours)).reshape(S, L, *neighbours.shape[1:])
            mk = torch.from_numpy(np.ascontiguousarray(mask)).reshape(S, L, *mask.shape[1:])
        doc_end = torch.from_numpy(plan.chunk_doc_end).reshape(S, L)
        return cls(torch.from_numpy(plan.inputs), torch.from_numpy(plan.targets), nb, mk, doc_end)

    def subset(self, index) -> "SequenceSet":
        # Stream offsets are positions in the full set's packed stream, so a subset drops them.
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return SequenceSet(self.inputs[index], self.targets[index], pick(self.neighbours), pick(self.neighbour_mask))

    def batch(self, index: torch.Tensor, device, *, retrieval: bool = True, mix=None, generator: torch.Generator | None = None) -> dict:
        """Model inputs for the given rows, on device.

        Args:
            index: rows to take.
            device: where the tensors go.
            retrieval: False drops the neighbours.
            mix: a :class:`model.training.mix.NeighbourMix` applied to the rows' neighbours.
            generator: seeds the mix (a resumed run then sees the same batches).
        """
        out = {"input_ids": self.inputs[index].to(device), "targets": self.targets[index].to(device)}
        if retrieval and self.neighbours is not None:
            neighbours, mask = self.neighbours[index].long(), self.neighbour_mask[index]
            if mix is not None:
                neighbours, mask = mix.apply(self, index, neighbours, mask, generator=generator)
            out["neighbours"] = neighbours.to(device)
            out["neighbour_mask"] = mask.to(device)
        return out


def split_documents(docs: Sequence[Document], eval_fraction: float, seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Hold out a seeded share of documents (at least one when eval_fraction > 0 and there are two).

    The caller packs each side into its own windows, so every held-out token is evaluated and no
    window mixes the two sides, however short the documents (splitting packed windows instead
    would drop every window that straddles both, most of them when documents are a few chunks).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    ids = sorted({doc.doc_id for doc in docs})
    n_eval = int(round(len(ids) * eval_fraction))
    if eval_fraction > 0 and n_eval == 0 and len(ids) > 1:
        n_eval = 1
    held = set(np.random.default_rng(seed).permutation(ids)[:n_eval].tolist()) if n_eval else set()
    return [doc for doc in docs if doc.doc_id not in held], [doc for doc in docs if doc.doc_id in held]
