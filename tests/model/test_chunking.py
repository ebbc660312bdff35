"""Chunk texts are exact text of the document, cut on character boundaries, in every script."""

from __future__ import annotations

import random

import pytest

from model.contracts.chunking import chunk_document, chunk_texts
from model.contracts.ids import content_hash
from model.contracts.tokenizer import RetroTokenizer

JAPANESE = "東京都の天気は晴れ、最高気温は二十五度でした。新しい駅前の図書館は来月から午前九時に開館します。" * 6
EMOJI = "Launch day 🚀🎉 went well 👍🏽; the family 👨‍👩‍👧‍👦 flag 🇯🇵 and more 😀😃😄😁 " * 6
COMBINING = "Zalgo t\u0337\u0321e\u0334\u0322x\u0335t, q\u0307 x\u0323\u0307 and Hangul \u1100\u1161\u11a8 " * 8
MIXED = "Grüße, Ελληνικά, русский, العربية, हिन्दी, 中文, 한국어 — ∑ ≠ ∞ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 6


@pytest.fixture(scope="module")
def tokenizer() -> RetroTokenizer:
    return RetroTokenizer.load()


def chunks_of(tokenizer, text: str, m: int = 64):
    return chunk_document(tokenizer.encode(text), doc_id="d", url="u", content_hash=content_hash(text), tokenizer=tokenizer, chunk_tokens=m)


@pytest.mark.parametrize("text", [JAPANESE, EMOJI, COMBINING, MIXED], ids=["cjk", "emoji", "combining", "mixed"])
def test_joined_chunk_texts_are_the_document(tokenizer, text):
    chunks = chunks_of(tokenizer, text)
    assert len(chunks) > 2
    assert "".join(c.text for c in chunks) == text
    assert not any("\ufffd" in c.text for c in chunks)
    # The test is only worth something if some 64-token boundary does cut a character.
    assert any("\ufffd" in tokenizer.decode(c.tokens) for c in chunks)


def test_every_chunk_size_and_random_scripts(tokenizer):
    rng = random.Random(0)
    alphabet = list("abc xyz.") + list("日本語中文한국어") + ["😀", "👍🏽", "🇯🇵", "e\u0301", "\u0337", "𝔘"] + list("Ωжع")
    for trial in range(40):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400)))
        for m in (1, 2, 3, 7, 64):
            chunks = chunks_of(tokenizer, text, m)
            assert "".join(c.text for c in chunks) == text, (trial, m)
            assert not any("\ufffd" in c.text for c in chunks), (trial, m)


def test_a_chunk_text_depends_only_on_tokens_up_to_its_end(tokenizer):
    # What generation can query with: a completed chunk's text is the same whatever follows it.
    ids = tokenizer.encode(EMOJI + JAPANESE)
    whole = chunk_texts(tokenizer.token_bytes(ids), 16)
    for end in range(16, len(ids), 16):
        assert chunk_texts(tokenizer.token_bytes(ids[:end]), 16) == whole[: end // 16]


def test_special_token_text_is_kept(tokenizer):
    text = "before <|endoftext|> after"
    assert "".join(c.text for c in chunks_of(tokenizer, text, 2)) == text
