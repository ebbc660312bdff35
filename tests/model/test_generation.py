"""Generation: KV-cache decoding equals the full forward pass, retrieval once per chunk, sampling knobs."""

import pytest
import torch

from model.network.generation import generate, sample_next
from model.network.retro import pack_neighbours
from tests.fixtures.numerics import assert_greedy
from tests.fixtures.retro import PYDOC_PROMPT

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

PROMPT = PYDOC_PROMPT


@pytest.fixture()
def retriever(pydoc_retriever):
    return pydoc_retriever


def full_forward_logits(model, tokenizer, prompt_ids, new_ids, neighbours, k):
    """Logits a plain forward over prompt + new tokens gives where each new token was chosen, with the neighbours generation used."""
    m = model.config.chunk_tokens
    seq = prompt_ids + new_ids
    L = len(seq) // m
    nb, mask = pack_neighbours(neighbours[:L], k=k, r=model.config.neighbour_tokens)
    with torch.no_grad():
        logits = model(torch.tensor([seq]), nb[None] if L else None, mask[None] if L else None)
    return logits[0, len(prompt_ids) - 1 : len(seq) - 1]


def test_greedy_generation_with_cache_equals_full_forward(tiny_retro, retro_tokenizer, retriever):
    prompt_ids = retro_tokenizer.encode(PROMPT)
    assert len(prompt_ids) > 64
    out = generate(tiny_retro, retro_tokenizer, PROMPT, retriever=retriever, k=2, max_new_tokens=150, temperature=0, stop_at_eos=False)
    assert out.prompt_tokens == len(prompt_ids) and len(out.token_ids) == 150
    total = len(prompt_ids) + 150
    # One retrieval per completed chunk, except a chunk completed by the very last token (nothing reads it).
    assert out.retrievals == len(out.neighbours) == (total - 1) // 64
    assert all(len(nbs) == 2 for nbs in out.neighbours)
    # The prompt's complete chunks go in one call, then one call per completed chunk, each with the chunk's text.
    first_texts = retriever.calls[0][0]
    assert first_texts == [retro_tokenizer.decode(prompt_ids[u * 64 : (u + 1) * 64]) for u in range(len(prompt_ids) // 64)]
    assert all(len(texts) == 1 for texts, _, _ in retriever.calls[1:])
    assert_greedy(full_forward_logits(tiny_retro, retro_tokenizer, prompt_ids, out.token_ids, out.neighbours, 2), out.token_ids)
    assert out.text == retro_tokenizer.decode(out.token_ids)


def test_generation_without_retrieval(tiny_retro, retro_tokenizer):
    out = generate(tiny_retro, retro_tokenizer, PROMPT, retriever=None, max_new_tokens=80, temperature=0, stop_at_eos=False)
    assert out.retrievals == 0 and out.neighbours == []
    prompt_ids = retro_tokenizer.encode(PROMPT)
    seq = prompt_ids + out.token_ids
    with torch.no_grad():
        logits = tiny_retro(torch.tensor([seq]))
    assert_greedy(logits[0, len(prompt_ids) - 1 : -1], out.token_ids)


def test_sampling_is_seeded_and_knobs_apply(tiny_retro, retro_tokenizer, retriever):
    kw = dict(retriever=retriever, max_new_tokens=20, stop_at_eos=False)
    a = generate(tiny_retro, retro_tokenizer, "Hello world", seed=7, temperature=1.5, **kw)
    b = generate(tiny_retro, retro_tokenizer, "Hello world", seed=7, temperature=1.5, **kw)
    c = generate(tiny_retro, retro_tokenizer, "Hello world", seed=8, temperature=1.5, **kw)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = generate(tiny_retro, retro_tokenizer, "Hello world", temperature=0, **kw)
    assert generate(tiny_retro, retro_tokenizer, "Hello world", top_k=1, seed=1, **kw).token_ids == greedy.token_ids
    assert generate(tiny_retro, retro_tokenizer, "Hello world", top_p=1e-6, seed=2, **kw).token_ids == greedy.token_ids


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next(logits, top_k=2, generator=g)) for _ in range(50)} == {2, 3}
    # top_p 0.7: p(3)=0.64 alone is short of 0.7, so token 2 joins the nucleus, token 1 does not.
    assert {int(sample_next(logits, top_p=0.7, generator=g)) for _ in range(100)} == {2, 3}
    assert int(sample_next(logits, temperature=0)) == 3


@pytest.mark.parametrize("temperature, top_p", [(1e-45, None), (5e-324, None), (1e-30, None), (1e-37, None),
                                                 (1.0, 1e-300), (1.0, 1e-45), (1e-45, 1e-300)])
def test_the_smallest_temperatures_and_top_p_sample_the_best_token(temperature, top_p):
    # Their limit is greedy decoding; dividing by them or a nucleus rounded to 0 gave nan probabilities.
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [50.0, -1.0, 49.9, 0.0], [-200.0, 90.0, 89.0, -90.0]])
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=temperature, top_p=top_p, generator=g).tolist() == [3, 0, 1]


def test_empty_prompt_starts_from_end_of_text(tiny_retro, retro_tokenizer):
    out = generate(tiny_retro, retro_tokenizer, "", retriever=None, max_new_tokens=5, temperature=0, stop_at_eos=False)
    assert out.prompt_tokens == 1 and len(out.token_ids) == 5


def test_bad_requests_are_clear_errors(tiny_retro, retro_tokenizer, retriever):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_retro, retro_tokenizer, "x", retriever=None, max_new_tokens=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(tiny_retro, retro_tokenizer, "x", retriever=None, top_p=0)
    with pytest.raises(ValueError, match="top_k"):
        generate(tiny_retro, retro_tokenizer, "x", retriever=None, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_retro, retro_tokenizer, "x", retriever=None, temperature=-1)
    with pytest.raises(ValueError, match="k must be"):
        generate(tiny_retro, retro_tokenizer, "x", retriever=retriever, k=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(tiny_retro, retro_tokenizer, PROMPT * 3, retriever=None, max_new_tokens=400)

    class Broken:
        def retrieve(self, texts, k, *, exclude_doc_ids=None):
            return []

    with pytest.raises(RuntimeError, match="retriever returned 0"):
        generate(tiny_retro, retro_tokenizer, PROMPT, retriever=Broken(), max_new_tokens=3)
    assert tiny_retro.training is False
