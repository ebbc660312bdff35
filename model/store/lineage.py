"""Lineages: trained, empty IVF indexes (``trained/<lineage>.faiss``) that shards clone and share."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import faiss
import numpy as np

from model.contracts.embedder import EmbedderSpec
from model.store import faiss_index, layout
from model.store.backends import Backend
from model.store.errors import AlreadyExists
from model.store.faiss_index import IndexPolicy

LOG = logging.getLogger(__name__)


class Lineages:
    """Trains, stores and loads lineage quantizers (remote ones through the local cache).

    Args:
        backend: the store.
        cache_root: the local cache directory (remote stores only).
        policy: index policy (codec, nlist).
    """

    def __init__(self, backend: Backend, cache_root: Path, policy: IndexPolicy):
        self.backend = backend
        self.cache_root = cache_root
        self.policy = policy
        self._loaded: dict[str, faiss.Index] = {}

    def train(self, sample: np.ndarray, *, embedder: EmbedderSpec, lineage: str | None = None,
              expected_count: int | None = None) -> str:
        """Train a quantizer on ``sample`` and store it (see ``Store.train_lineage``)."""
        sample = faiss_index.check_vectors(sample, dim=embedder.dim, normalized=embedder.normalize)
        lineage = layout.check_id(lineage or layout.new_lineage_id(), "lineage")
        trained = faiss_index.train_ivf(sample, policy=self.policy, expected=expected_count)
        with self.backend.staging_dir() as directory:
            path = directory / "trained.faiss"
            faiss_index.write(trained, path)
            try:
                self.backend.put_file(layout.trained_key(lineage), path)
            except AlreadyExists:
                LOG.info("lineage %s was trained by another writer first; using theirs", lineage)
                return lineage
        self._loaded[lineage] = trained
        return lineage

    def get(self, lineage: str) -> faiss.Index | None:
        """The lineage's trained, empty index; None if the store has no such lineage."""
        if lineage in self._loaded:
            return self._loaded[lineage]
        key = layout.trained_key(lineage)
        path = self.backend.local_path(key)
        if path is None:
            path = layout.cache_trained_path(self.cache_root, lineage)
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
                try:
                    self.backend.get_file(key, tmp)
                except FileNotFoundError:
                    return None
                os.replace(tmp, path)
        elif not path.is_file():
            return None
        trained = faiss_index.read_writable(path)
        self._loaded[lineage] = trained
        return trained
