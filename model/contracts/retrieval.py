"""The retrieval contract between the RETRO network and whatever serves neighbours.

The store implements it with :class:`model.store.retriever.StoreRetriever`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence



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
