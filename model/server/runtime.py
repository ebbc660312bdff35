"""What a server loads once at start-up: the checkpoint, its tokenizer, the query embedder, the store."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from model.contracts.compat import Compatibility
from model.contracts.settings import Settings

LOG = logging.getLogger(__name__)


class LockedEmbedder:
    """An :class:`model.contracts.embedder.Embedder` that encodes one batch at a time.

    The Hugging Face fast tokenizer inside the embedder changes its truncation/padding state on
    every call and raises "Already borrowed" when two threads do so at once; and two forward
    passes at once only fight over the same cores. The retrieve batcher and the generation
    threads therefore share one lock.
    """

    def __init__(self, embedder):
        self.inner = embedder
        self.spec = embedder.spec
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        with self._lock:
            return self.inner.encode(texts, **kwargs)


@dataclass
class Runtime:
    """The parts loaded once per process and shared by every request."""

    model: Any  # model.network.retro.Retro, in eval mode
    tokenizer: Any  # model.contracts.tokenizer.RetroTokenizer
    embedder: LockedEmbedder
    store: Any  # from model.store.open_store
    compatibility: Compatibility
    longest_token_bytes: int  # no token of the tokenizer spans more bytes (bounds tokens from below)
    precision: Any = "fp32"  # model.contracts.precision.Decision the model's scoring and generation run in


class StartupError(Exception):
    """The server cannot start: a missing checkpoint or store, or an embedder that does not match."""


def load_runtime(settings: Settings) -> Runtime:
    """Load the checkpoint, its tokenizer and the embedder, and open the store.

    Args:
        settings: ``checkpoint`` and ``store`` must be set; ``embedder_path`` (None: the bundled
            all-MiniLM-L6-v2), ``cache_dir``, ``device`` and ``precision`` are used as given.

    Returns:
        The runtime, with the compatibility every index version must match.

    Raises:
        StartupError: with a message that says what to fix.
    """
    if settings.checkpoint is None:
        raise StartupError("no checkpoint: pass --checkpoint DIR or set RETROFRESH_CHECKPOINT")
    if settings.store is None:
        raise StartupError("no index store: pass --store URI or set RETROFRESH_STORE")
    from model.contracts.embedder import Embedder
    from model.contracts.precision import resolve
    from model.network.checkpoint import load_checkpoint
    from model.store import open_store

    try:
        model, tokenizer = load_checkpoint(settings.checkpoint, device=settings.device)
    except (FileNotFoundError, ValueError) as exc:
        raise StartupError(f"cannot load the checkpoint {settings.checkpoint}: {exc}") from exc
    model.eval()
    try:
        precision = resolve(settings.precision, settings.device)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    embedder = Embedder(settings.embedder_path, device=settings.device, precision=precision)
    config = model.config
    if config.embedder is None:
        LOG.warning("checkpoint %s records no embedder; using %s", settings.checkpoint, embedder.spec.name)
    # load_checkpoint has checked the tokenizer files against the config's record.
    Compatibility.of(embedder=embedder.spec, source=f"the embedder at {embedder.path}", kind="run").check(
        Compatibility.of_config(config, source=f"the checkpoint {settings.checkpoint}"), terms=("embedder",),
        fix="pass the matching --embedder", error=StartupError,
    )
    compatibility = Compatibility.of(
        embedder=embedder.spec, tokenizer=tokenizer, chunk_tokens=config.chunk_tokens,
        continuation_tokens=config.continuation_tokens, source="the checkpoint", kind="model",
    )
    try:
        store = open_store(settings.store, cache_dir=settings.cache_dir, cache_max_bytes=settings.cache_max_bytes)
    except Exception as exc:
        raise StartupError(f"cannot open the index store {settings.store}: {exc}") from exc
    LOG.info("loaded checkpoint %s, embedder %s, store %s; computing in %s (%s)", settings.checkpoint, embedder.spec.name, settings.store,
             precision.precision, precision.reason)
    return Runtime(
        model=model,
        tokenizer=tokenizer,
        embedder=LockedEmbedder(embedder),
        store=store,
        compatibility=compatibility,
        longest_token_bytes=longest_token_bytes(tokenizer),
        precision=precision,
    )


def longest_token_bytes(tokenizer) -> int:
    """The most UTF-8 bytes one token of a byte-level BPE tokenizer can stand for.

    Byte-level BPE vocabularies spell each byte as one character, so a vocabulary entry's length
    is its byte count; added (special) tokens are literal text and count by their UTF-8 bytes.
    """
    data = json.loads(tokenizer.to_json())
    vocab = data.get("model", {}).get("vocab", {})
    added = [len(t["content"].encode("utf-8")) for t in data.get("added_tokens", [])]
    return max([len(token) for token in vocab] + added + [1])
