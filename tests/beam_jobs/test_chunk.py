"""The chunk stage: stored chunk texts are exact text of the document, whatever its encoding was."""

from __future__ import annotations

from beam_jobs.chunk import ChunkDoFn
from beam_jobs.extract import extract_plain
from beam_jobs.types import FETCHED, NEW, Observation, ToChunk
from model.contracts.chunking import Chunk
from model.contracts.ids import content_hash
from model.contracts.tokenizer import RetroTokenizer

JAPANESE = "東京都の天気は晴れ、最高気温は二十五度でした。新しい駅前の図書館は来月から午前九時に開館します。" * 6


def test_shift_jis_page_chunks_have_no_replacement_characters():
    tokenizer = RetroTokenizer.load()
    extracted = extract_plain(JAPANESE.encode("shift_jis"), "shift_jis", markdown=False)
    assert extracted.text == JAPANESE.strip()
    obs = Observation(doc_id="d", url="http://site/ja.txt", source="s", outcome=FETCHED, text=extracted.text, content_hash=content_hash(extracted.text))
    fn = ChunkDoFn(tokenizer.to_json(), tokenizer.name, tokenizer.sha256)
    fn.setup()
    chunks = [c for c in fn.process(ToChunk(obs, first_seen=None, outcome=NEW)) if isinstance(c, Chunk)]
    assert len(chunks) > 2
    assert "".join(c.text for c in chunks) == extracted.text
    assert not any("\ufffd" in c.text for c in chunks)
