"""RETRO chunking: split a document's tokens into m-token chunks, each with its continuation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from model.contracts.ids import chunk_id

CHUNK_TOKENS = 64  # m in the paper
CONTINUATION_TOKENS = 64  # a neighbour is its chunk plus the next 64 tokens: r = 128


@dataclass(frozen=True)
class Chunk:
    """One retrieval unit, as stored in a shard's chunk rows (chunks.arrow)."""

    chunk_id: int
    doc_id: str
    position: int  # index of the chunk within its document (0, 1, 2, ...)
    tokens: list[int]  # at most chunk_tokens ids; only a document's last chunk is shorter
    continuation: list[int]  # up to continuation_tokens ids that follow in the same document
    text: str  # the document's text this chunk covers, cut on character boundaries (see chunk_texts)
    url: str


class TokenBytes(Protocol):
    """What chunking needs of a tokenizer: the bytes behind each token id."""

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]: ...


def chunk_texts(pieces: Sequence[bytes], chunk_tokens: int = CHUNK_TOKENS) -> list[str]:
    """The text of each ``chunk_tokens``-token chunk, cut on UTF-8 character boundaries.

    A byte-level BPE token can end in the middle of a multi-byte character (a CJK character,
    an emoji), so decoding each chunk's tokens on their own would turn the split character into
    U+FFFD on both sides. Here a character belongs to the chunk that holds its last byte: the
    texts joined are the document, and a chunk's text depends only on the tokens up to its end
    (a query made from a completed chunk during generation gets the same text as its key).

    Args:
        pieces: the bytes of each token of the document (``tokenizer.token_bytes(ids)``).
        chunk_tokens: m.

    Returns:
        One text per chunk, in order.
    """
    data = b"".join(pieces)
    cuts, offset = [0], 0
    for start in range(0, len(pieces), chunk_tokens):
        offset += sum(len(p) for p in pieces[start : start + chunk_tokens])
        cuts.append(_char_start_at_or_before(data, offset))
    return [data[a:b].decode("utf-8", errors="replace") for a, b in zip(cuts, cuts[1:])]


def _char_start_at_or_before(data: bytes, offset: int) -> int:
    """``offset``, or the first byte of the character it would cut (one that ends after it)."""
    start = offset
    while start > 0 and offset - start < 3 and data[start - 1] & 0xC0 == 0x80:  # continuation bytes
        start -= 1
    if start == 0 or offset - start == 3 and data[start - 1] & 0xC0 == 0x80:
        return offset  # no lead byte within reach: not UTF-8 here, cut where asked
    lead = start - 1
    first = data[lead]
    length = 1 if first < 0x80 else 2 if first >> 5 == 0b110 else 3 if first >> 4 == 0b1110 else 4 if first >> 3 == 0b11110 else 1
    return lead if lead + length > offset else offset


def chunk_document(
    token_ids: list[int],
    *,
    doc_id: str,
    url: str,
    content_hash: str,
    tokenizer: TokenBytes,
    chunk_tokens: int = CHUNK_TOKENS,
    continuation_tokens: int = CONTINUATION_TOKENS,
) -> list[Chunk]:
    """Cut a tokenised document into RETRO chunks.

    Args:
        token_ids: the whole document, tokenised with the model's tokenizer.
        doc_id: the document's id (:func:`model.contracts.ids.doc_id`).
        url: where the document came from, kept for citations.
        content_hash: sha256 of the document's normalised text; part of every chunk id.
        tokenizer: the tokenizer that made ``token_ids`` (its ``token_bytes`` give the chunk texts).
        chunk_tokens: m, 64 in RETRO.
        continuation_tokens: tokens kept after each chunk, 64 in RETRO.

    Returns:
        The chunks in document order; empty for an empty document.
    """
    chunks = []
    texts = chunk_texts(tokenizer.token_bytes(token_ids), chunk_tokens)
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
                text=texts[position],
                url=url,
            )
        )
    return chunks
