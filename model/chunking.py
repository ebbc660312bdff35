"""RETRO chunking: split a document's tokens into m-token chunks, each with its continuation."""

from __future__ import annotations

from dataclasses import dataclass

from model.ids import chunk_id

CHUNK_TOKENS = 64  # m in the paper
CONTINUATION_TOKENS = 64  # a neighbour is its chunk plus the next 64 tokens: r = 128


@dataclass(frozen=True)
class Chunk:
    """One retrieval unit, as stored in a shard's chunks.parquet."""

    chunk_id: int
    doc_id: str
    position: int  # index of the chunk within its document (0, 1, 2, ...)
    tokens: list[int]  # at most chunk_tokens ids; only a document's last chunk is shorter
    continuation: list[int]  # up to continuation_tokens ids that follow in the same document
    text: str  # decoded chunk tokens: exactly what the embedder sees for keys and queries
    url: str


def chunk_document(
    token_ids: list[int],
    *,
    doc_id: str,
    url: str,
    content_hash: str,
    decode,
    chunk_tokens: int = CHUNK_TOKENS,
    continuation_tokens: int = CONTINUATION_TOKENS,
) -> list[Chunk]:
    """Cut a tokenised document into RETRO chunks.

    Args:
        token_ids: the whole document, tokenised with the model's tokenizer.
        doc_id: the document's id (:func:`model.ids.doc_id`).
        url: where the document came from, kept for citations.
        content_hash: sha256 of the document's normalised text; part of every chunk id.
        decode: ``list[int] -> str``, the tokenizer's decode, used for the chunk text.
        chunk_tokens: m, 64 in RETRO.
        continuation_tokens: tokens kept after each chunk, 64 in RETRO.

    Returns:
        The chunks in document order; empty for an empty document.
    """
    chunks = []
    for position, start in enumerate(range(0, len(token_ids), chunk_tokens)):
        tokens = token_ids[start : start + chunk_tokens]
        continuation = token_ids[start + chunk_tokens : start + chunk_tokens + continuation_tokens]
        chunks.append(
            Chunk(
                chunk_id=chunk_id(doc_id, position, content_hash),
                doc_id=doc_id,
                position=position,
                tokens=list(tokens),
                continuation=list(continuation),
                text=decode(list(tokens)),
                url=url,
            )
        )
    return chunks
