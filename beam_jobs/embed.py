"""Embedding: chunk text -> key vectors with the frozen encoder, through Beam RunInference."""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from beam_jobs.chunk import KEPT, LEDGER as CHUNK_LEDGER, ChunkDoFn
from beam_jobs.metrics import timed
from model.contracts.chunking import Chunk
from model.contracts.embedder import DEFAULT_EMBEDDER_NAME

LOG = logging.getLogger(__name__)


# One encoder per process, reused by every job and validation it runs: a long-lived process (a
# watch, a warm worker, a benchmark) pays the ~1 s load once. Held here, strongly: Beam's Shared
# keeps only the most recently acquired of ALL its objects alive, and RunInference acquires
# others (its model status, its wrapper) at the start of every run, so an encoder held by
# Shared alone was collected between two runs and loaded again for each.
_ENCODER_LOCK = threading.Lock()
_ENCODER: tuple[str, Any] | None = None  # (tag, encoder): the one asked for last


def shared_embedder(path: str | None = None, *, max_length: int = 128, precision: str = "fp32"):
    """The process's :class:`model.contracts.embedder.Embedder` for ``path``, loaded on first use.

    One encoder is kept: asking for another (path, max_length, precision) releases the previous
    one before loading, so a process never holds two.

    Args:
        path: encoder directory; None for the bundled all-MiniLM-L6-v2.
        max_length: the encoder's token limit per text.
        precision: "fp32", "bf16" or "auto" (decided here, on the worker's CPU: model.contracts.precision).
    """
    global _ENCODER
    tag = f"{path or DEFAULT_EMBEDDER_NAME}:{max_length}:{precision}"
    with _ENCODER_LOCK:  # the workers' threads of one process share it; one loads, the others wait
        if _ENCODER is None or _ENCODER[0] != tag:
            from transformers.utils import logging as hf_logging

            from model.contracts.embedder import Embedder

            _ENCODER = None
            hf_logging.disable_progress_bar()  # one bar per worker per run is noise in job logs
            with timed("embedder_load"):  # counted only when it really loads (inside a job)
                _ENCODER = (tag, Embedder(path, max_length=max_length, precision=precision))
        return _ENCODER[1]


def threads_for_load(load_1m: float, cpus: int, default: int) -> int:
    """Intra-op threads for one batch: 1 while more threads want to run than there are cores, else ``default``.

    torch's intra-op threads meet at a barrier after every operator, so on an oversubscribed
    machine one descheduled thread stalls the rest: at load ~16 on 2 cores, 21 chunks embedded
    in 10.4-11.2 s with 2 threads and 1.8-6.5 s with 1 (on an idle machine 2 threads are ~1.6x
    faster than 1).

    Args:
        load_1m: the 1-minute load average (``os.getloadavg()[0]``).
        cpus: the machine's cores.
        default: the threads to use otherwise (torch's setting).
    """
    return 1 if load_1m > cpus else default


@contextmanager
def threads_fitting_load(threads: int | None = None) -> Iterator[None]:
    """torch's intra-op threads for the block: ``threads``, else :func:`threads_for_load`'s choice; restored after.

    The setting is the process's: a block in another thread meanwhile runs with it too (a matter
    of speed, never of results beyond float rounding).
    """
    import torch

    default = torch.get_num_threads()
    wanted = threads or threads_for_load(os.getloadavg()[0], os.cpu_count() or 1, default)
    if wanted != default:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != default:
            torch.set_num_threads(default)


class ChunkEmbeddingHandler(ModelHandler[Chunk, tuple[Chunk, np.ndarray], Any]):
    """RunInference handler: batches of Chunks -> (chunk, float32 vector) pairs.

    The model (``model.contracts.embedder.Embedder``) loads once per worker in ``load_model``; batches are
    sized by Beam's BatchElements between ``min_batch_size`` and ``max_batch_size``.

    Args:
        path: encoder directory on the worker; None for the bundled all-MiniLM-L6-v2.
        max_length: the encoder's token limit per text.
        min_batch_size: smallest batch Beam hands over (small batches waste the matrix units).
        max_batch_size: largest batch Beam hands over.
        encode_batch_size: texts per forward pass; a batch is sorted by token count and cut into
            passes of this size, so texts of similar length are padded together (large Beam
            batches therefore pad less: 256-1024 ran ~10% faster than 64-256 here).
        share_across_processes: one model per machine instead of one per process: saves memory
            on many-process workers, but serialises inference, so off by default on CPUs.
        torch_threads: intra-op threads per model; None: torch's default, or 1 for a batch
            embedded while the machine is oversubscribed (:func:`threads_for_load`).
        precision: "fp32", "bf16" or "auto" (bf16 where the worker's CPU runs it faster).
    """

    def __init__(
        self,
        path: str | None = None,
        *,
        max_length: int = 128,
        min_batch_size: int = 256,
        max_batch_size: int = 1024,
        encode_batch_size: int = 64,
        share_across_processes: bool = False,
        torch_threads: int | None = None,
        precision: str = "fp32",
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.precision = precision
        self.path = path
        self.max_length = max_length
        self.encode_batch_size = encode_batch_size
        self.share_across_processes = share_across_processes
        self.torch_threads = torch_threads

    def load_model(self):
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return shared_embedder(self.path, max_length=self.max_length, precision=self.precision)

    def run_inference(self, batch: Sequence[Chunk], model, inference_args: dict | None = None) -> Iterable[tuple[Chunk, np.ndarray]]:
        with threads_fitting_load(self.torch_threads), timed("embed"):
            return self._embed(batch, model)

    def _embed(self, batch: Sequence[Chunk], model) -> list[tuple[Chunk, np.ndarray]]:
        texts = [chunk.text for chunk in batch]
        # Each pass pads to its longest text, so sort by token count. Character counts (what
        # sentence-transformers sorts by) track it loosely: on the sample world, 256-chunk batches
        # sorted by characters pass ~14% more tokens (padding included) than sorted by tokens
        # and embed ~11% slower; counting the tokens costs ~0.5% of the forward passes.
        lengths = model.tokenizer(
            texts, truncation=True, max_length=model.spec.max_length, return_attention_mask=False, return_token_type_ids=False, return_length=True
        )["length"]
        order = sorted(range(len(batch)), key=lengths.__getitem__)
        vectors = model.encode([texts[i] for i in order], batch_size=self.encode_batch_size)
        out: list = [None] * len(batch)
        for rank, i in enumerate(order):
            out[i] = (batch[i], vectors[rank])
        return out

    def get_num_bytes(self, batch: Sequence[Chunk]) -> int:
        return sum(len(chunk.text.encode("utf-8")) for chunk in batch)

    def get_metrics_namespace(self) -> str:
        return "retrofresh_embed"

    def share_model_across_processes(self) -> bool:
        return self.share_across_processes


class ChunkAndEmbed(beam.PTransform):
    """New and changed documents (ToChunk) -> their chunks' key vectors and new ledger rows.

    Args:
        tokenizer_json, tokenizer_name, tokenizer_sha256: the model's tokenizer, as for
            :class:`beam_jobs.chunk.ChunkDoFn`.
        handler: the RunInference handler that embeds chunks (:class:`ChunkEmbeddingHandler`).

    Returns:
        ``{"embedded": (Chunk, float32 vector) pairs, "ledger": one LedgerRow per document, with
        its chunk ids, "kept": parent rows of changed documents the chunker quarantined}``.

    Example::

        parts = to_chunk | "ChunkAndEmbed" >> ChunkAndEmbed(json_text, name, sha256, ChunkEmbeddingHandler(path))
    """

    def __init__(self, tokenizer_json: str, tokenizer_name: str, tokenizer_sha256: str, handler: ModelHandler):
        super().__init__()
        self.tokenizer = (tokenizer_json, tokenizer_name, tokenizer_sha256)
        self.handler = handler

    def expand(self, to_chunk):
        chunked = to_chunk | "Chunk" >> beam.ParDo(ChunkDoFn(*self.tokenizer)).with_outputs(CHUNK_LEDGER, KEPT, main="chunks")
        embedded = chunked.chunks | "Embed" >> RunInference(self.handler)
        return {"embedded": embedded, "ledger": chunked[CHUNK_LEDGER], KEPT: chunked[KEPT]}
