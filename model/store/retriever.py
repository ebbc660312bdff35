"""The retrieval contract (:mod:`model.contracts.retrieval`) implemented over one index version."""

from __future__ import annotations

from typing import Sequence

from model.contracts.compat import Compatibility
from model.contracts.retrieval import Neighbour
from model.store.errors import IncompatibleIndex


class StoreRetriever:
    """A :class:`~model.contracts.retrieval.Retriever` over one loaded index version: embeds texts, searches the view.

    Args:
        view: a :class:`model.store.IndexView` (from ``Store.open``); the caller owns and closes it.
        embedder: a ``model.contracts.embedder.Embedder`` (anything with ``spec`` and ``encode``); it must be
            the embedder that made the version's keys.
        batch_size: texts per embedding forward pass.

    Raises:
        IncompatibleIndex: the embedder's spec differs from the version's.
    """

    def __init__(self, view, embedder, *, batch_size: int = 64):
        queries = Compatibility.of(embedder=embedder.spec, source="this retriever", kind="run")
        index = Compatibility.of_manifest(view.manifest, source=f"index version {view.version}")
        if queries.mismatches(index, ("embedder",)):
            queries.check(index, terms=("embedder",), fix="use the embedder that made the index", error=IncompatibleIndex)
        self.view = view
        self.embedder = embedder
        self.batch_size = batch_size

    @property
    def version(self) -> str:
        return self.view.version

    def retrieve(
        self,
        texts: Sequence[str],
        k: int,
        *,
        exclude_doc_ids: Sequence[str | None] | None = None,
    ) -> list[list[Neighbour]]:
        """Up to k neighbours per query text, best first (see ``IndexView.search``).

        Args:
            texts: query chunk texts, formatted exactly as stored chunk texts.
            k: neighbours per text (0: none).
            exclude_doc_ids: per text, a document whose chunks must not be returned.

        Returns:
            One list of neighbours per text.
        """
        texts = list(texts)
        if not texts:
            return []
        if exclude_doc_ids is not None and len(exclude_doc_ids) != len(texts):
            raise ValueError(f"exclude_doc_ids has {len(exclude_doc_ids)} entries for {len(texts)} texts")
        if k == 0:
            return [[] for _ in texts]
        queries = self.embedder.encode(texts, batch_size=self.batch_size)
        return self.view.search(queries, k, exclude_doc_ids=exclude_doc_ids)
