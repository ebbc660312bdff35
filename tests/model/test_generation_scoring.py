"""Scoring: loss and bits-per-byte with retrieval on/off, document and n-gram leakage control."""

import math

import pytest
import torch
from pydoc_data.topics import topics

from model.network.retro import pack_neighbours
from model.network.scoring import filter_leaks, score
from tests.fixtures.retro import OverlapRetriever
from tests.fixtures.numerics import approx

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

TEXT = topics["for"][:1500]
URL = "https://docs.example/for"


@pytest.fixture()
def retriever(retro_tokenizer):
    # The scored text is itself in the corpus: the leak that exclusion must remove.
    return OverlapRetriever(retro_tokenizer, {URL: TEXT, "https://docs.example/while": topics["while"], "https://docs.example/if": topics["if"]})


def manual_loss(model, ids, neighbours=None, k=2):
    nb = mask = None
    if neighbours is not None:
        nb, mask = pack_neighbours(neighbours, k=k, r=model.config.neighbour_tokens)
        nb, mask = nb[None], mask[None]
    with torch.no_grad():
        logits = model(torch.tensor([ids]), nb, mask)
    return torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids[1:])).item()


def test_score_without_retrieval_matches_the_forward_pass(tiny_retro, retro_tokenizer):
    ids = retro_tokenizer.encode(TEXT)
    result = score(tiny_retro, retro_tokenizer, TEXT, retriever=None)
    assert not result.retrieval and result.tokens == len(ids) - 1
    assert result.loss == approx(manual_loss(tiny_retro, ids))  # summed per token, not averaged by cross_entropy
    first = len(retro_tokenizer.decode(ids[:1]).encode())
    assert result.bytes == len(TEXT.encode()) - first
    assert result.bits_per_byte == pytest.approx(result.loss * result.tokens / math.log(2) / result.bytes)


def test_score_with_retrieval_uses_the_retrieved_neighbours(tiny_retro, retro_tokenizer, retriever):
    ids = retro_tokenizer.encode(TEXT)
    result = score(tiny_retro, retro_tokenizer, TEXT, retriever=retriever, k=2)
    assert result.retrieval and result.neighbours_used == 2 * (len(ids) // 64)
    texts, k, exclude = retriever.calls[-1]
    assert k == 2 and exclude is None and len(texts) == len(ids) // 64
    found = retriever.retrieve(texts, 2)
    assert result.loss == approx(manual_loss(tiny_retro, ids, found))
    # Any difference is retrieval's: one process, the same kernels (a tiny random model's neighbours move the loss by ~1e-6).
    assert result.loss != score(tiny_retro, retro_tokenizer, TEXT, retriever=None).loss


def test_excluding_the_source_document(tiny_retro, retro_tokenizer, retriever):
    from model.contracts.ids import doc_id

    own = doc_id(URL)
    assert any(nb.doc_id == own for nbs in retriever.retrieve([TEXT[:200]], 2) for nb in nbs)
    score(tiny_retro, retro_tokenizer, TEXT, retriever=retriever, exclude_doc_id=own)
    _, _, exclude = retriever.calls[-1]
    assert exclude and set(exclude) == {own}
    only_self = OverlapRetriever(retro_tokenizer, {URL: TEXT})
    excluded = score(tiny_retro, retro_tokenizer, TEXT, retriever=only_self, exclude_doc_id=own)
    off = score(tiny_retro, retro_tokenizer, TEXT, retriever=None)
    assert excluded.neighbours_used == 0 and excluded.loss == approx(off.loss)


def test_ngram_exclusion_drops_leaking_neighbours(tiny_retro, retro_tokenizer, retriever):
    result = score(tiny_retro, retro_tokenizer, TEXT, retriever=retriever, exclude_ngram=8)
    # The text's own chunks (whose continuations are exactly what is predicted) must all go.
    assert result.neighbours_excluded >= len(retro_tokenizer.encode(TEXT)) // 64 - 1
    assert retriever.calls[-1][1] == 2 * 4  # over-fetched so k can survive the filter


def test_filter_leaks_unit(retro_tokenizer):
    from model.contracts.retrieval import Neighbour

    def nb(tokens):
        return Neighbour(chunk_id=1, doc_id="d", url="u", text="", tokens=tokens[:3], continuation=tokens[3:], score=1.0)

    target = [1, 2, 3, 4, 5, 6]
    kept, dropped = filter_leaks([nb([9, 9, 3, 4, 5, 9]), nb([3, 4, 9, 5, 6, 9]), nb([7, 8])], target, 3, k=2)
    assert dropped == 1 and [n.tokens for n in kept] == [[3, 4, 9], [7, 8]]


def test_bad_scoring_requests(tiny_retro, retro_tokenizer, retriever):
    with pytest.raises(ValueError, match="at least 2"):
        score(tiny_retro, retro_tokenizer, "a", retriever=None)
    with pytest.raises(ValueError, match="k must"):
        score(tiny_retro, retro_tokenizer, TEXT, retriever=retriever, k=0)
    with pytest.raises(ValueError, match="exclude_ngram"):
        score(tiny_retro, retro_tokenizer, TEXT, retriever=retriever, exclude_ngram=0)


def test_texts_longer_than_the_context_are_scored_in_windows(tiny_retro, retro_tokenizer, retriever):
    long_text = topics["for"] + topics["while"] + topics["if"] + topics["try"]
    ids = retro_tokenizer.encode(long_text)
    assert len(ids) > 2 * tiny_retro.config.max_seq_len
    result = score(tiny_retro, retro_tokenizer, long_text, retriever=retriever)
    assert result.tokens == len(ids) - 1 and math.isfinite(result.loss)
    assert result.neighbours_used == 2 * (len(ids) // 64)
