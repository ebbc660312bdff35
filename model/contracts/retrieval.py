"""The retrieval contract between the RETRO network and whatever serves neighbours."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from model.compat import Compatibility


@dataclass(frozen=True)
class Neighbour:
    """A retrieved chunk: its 64 tokens plus the 64 that follow it in its document."""

    chunk_id: int
    doc_id: str
    url: str
    text: str
    tokens: list[int]
    continuation: list[int]
    score: float
    position: int = 0
    version: str | None = field(default=None, compare=False)  # index version it came from

    @property
    def retrieved_tokens(self) -> list[int]:
        """Chunk followed by continuation: the r = 128 tokens the neighbour encoder reads."""
        return self.tokens + self.continuation


class Retriever(Protocol):
    """Anything that returns up to k neighbours for each query chunk text.

    The same text formatting is used for keys and queries: a query is the decoded text of a
    64-token chunk, exactly as keys were made from stored chunks.
    """

    def retrieve(
        self,
        texts: Sequence[str],
        k: int,
        *,
        exclude_doc_ids: Sequence[str | None] | None = None,
    ) -> list[list[Neighbour]]: ...


class StoreRetriever:
    """A :class:`Retriever` over one loaded index version: embeds texts, searches the view.

    Args:
        view: a ``model.store.IndexView`` (from ``Store.open``); the caller owns and closes it.
        embedder: a ``model.embedder.Embedder`` (anything with ``spec`` and ``encode``); it must be
            the embedder that made the version's keys.
        batch_size: texts per embedding forward pass.

    Raises:
        IncompatibleIndex: the embedder's spec differs from the version's.
    """

    def __init__(self, view, embedder, *, batch_size: int = 64):
        queries = Compatibility.of(embedder=embedder.spec, source="this retriever", kind="run")
        index = Compatibility.of_manifest(view.manifest, source=f"index version {view.version}")
        if queries.mismatches(index, ("embedder",)):
            from model.store.errors import IncompatibleIndex  # only here: this module stays faiss-free

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
