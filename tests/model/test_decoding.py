"""Static-shape decoding (the step CUDA graphs replay) equals Retro's own cached step, token for token."""

import pytest
import torch

from model.network.decoding import StaticDecoder
from model.network.generation import generate
from model.network.retro import pack_neighbours
from tests.fixtures.retro import PYDOC_PROMPT
from tests.fixtures.numerics import assert_close

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

PROMPT = PYDOC_PROMPT


@pytest.fixture()
def retriever(pydoc_retriever):
    return pydoc_retriever


def neighbours_of(retriever, tokenizer, model, chunk_ids, k, *, drop_second=False):
    """(1, L, k, r) neighbours and mask for chunks; optionally with the second neighbour missing."""
    found = retriever.retrieve([tokenizer.decode(c) for c in chunk_ids], k)
    if drop_second:
        found = [nbs[:1] for nbs in found]
    nb, mask = pack_neighbours(found, k=k, r=model.config.neighbour_tokens)
    return nb[None], mask[None]


@pytest.mark.parametrize("drop_second", [False, True], ids=["all-neighbours", "masked-neighbours"])
@torch.inference_mode()
def test_static_steps_equal_cached_steps_across_chunks(tiny_retro, retro_tokenizer, retriever, drop_second):
    model, m, k = tiny_retro, tiny_retro.config.chunk_tokens, 2
    prompt = retro_tokenizer.encode(PROMPT)[:100]  # one complete chunk and 36 tokens of the next
    continuation = torch.randint(1, retro_tokenizer.vocab_size, (130,), generator=torch.Generator().manual_seed(1)).tolist()
    caches, logits = [], []
    for _ in range(2):
        cache = model.new_cache(1, len(prompt) + len(continuation))
        nb, mask = neighbours_of(retriever, retro_tokenizer, model, [prompt[:m]], k, drop_second=drop_second)
        model(torch.tensor([prompt]), nb, mask, cache=cache)
        caches.append(cache)
        logits.append([])
    eager_cache, static_cache = caches
    decoder = StaticDecoder(model, static_cache)
    assert not decoder.use_graphs  # CPU
    sequence = list(prompt)
    for token in continuation:
        sequence.append(token)
        ids = torch.tensor([[token]])
        if len(sequence) % m == 0:  # completes a chunk: both go through the model, which encodes its neighbours
            with pytest.raises(ValueError, match="completes a chunk"):
                decoder(ids)
            nb, mask = neighbours_of(retriever, retro_tokenizer, model, [sequence[-m:]], k, drop_second=drop_second)
            for cache, out in zip(caches, logits):
                out.append(model(ids, nb, mask, cache=cache)[:, -1])
            continue
        logits[0].append(model(ids, cache=eager_cache)[:, -1])
        logits[1].append(decoder(ids).clone())
    assert eager_cache.pos == static_cache.pos == len(sequence)
    assert_close(torch.cat(logits[1]), torch.cat(logits[0]))  # the static step reads the whole cache under a mask: other kernels
    written = len(sequence)
    for eager_layer, static_layer in zip(eager_cache.layers, static_cache.layers):
        assert_close(static_layer.k[:, :, :written], eager_layer.k[:, :, :written])


@torch.inference_mode()
def test_static_steps_without_retrieval(tiny_retro, retro_tokenizer):
    model = tiny_retro
    prompt = retro_tokenizer.encode(PROMPT)[:70]
    eager, static = model.new_cache(1, 200), model.new_cache(1, 200)
    expected = model(torch.tensor([prompt]), cache=eager)[:, -1]
    model(torch.tensor([prompt]), cache=static)
    decoder = StaticDecoder(model, static)
    for token in range(5, 30):
        ids = torch.tensor([[token]])
        expected, got = model(ids, cache=eager)[:, -1], decoder(ids)
        assert_close(got, expected)
    assert decoder.cca_mask is None  # nothing to attend: no CCA buffers were made


def test_generate_with_static_steps_gives_the_same_tokens(tiny_retro, retro_tokenizer, retriever):
    kwargs = dict(retriever=retriever, k=2, max_new_tokens=140, temperature=0, stop_at_eos=False)
    plain = generate(tiny_retro, retro_tokenizer, PROMPT, static_steps=False, **kwargs)
    static = generate(tiny_retro, retro_tokenizer, PROMPT, static_steps=True, **kwargs)
    assert static.token_ids == plain.token_ids
    assert static.retrievals == plain.retrievals > 1


def test_static_decoder_refuses_misuse(tiny_retro):
    cache = tiny_retro.new_cache(1, 100)
    with pytest.raises(ValueError, match="prompt"):
        StaticDecoder(tiny_retro, cache)(torch.tensor([[1]]))
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(tiny_retro, cache, use_graphs=True)


def test_static_steps_are_for_retro_models_only(tiny_retro, retro_tokenizer):
    class Wrapped(torch.nn.Module):  # any other network with Retro's calling convention
        def __init__(self):
            super().__init__()
            self.inner = tiny_retro
            self.config = tiny_retro.config

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

        def new_cache(self, *args, **kwargs):
            return self.inner.new_cache(*args, **kwargs)

    wrapped = Wrapped().eval()  # generate restores the mode it found, on the shared tiny_retro too
    with pytest.raises(ValueError, match="static_steps needs a Retro"):
        generate(wrapped, retro_tokenizer, PROMPT, retriever=None, max_new_tokens=3, static_steps=True)
    assert len(generate(wrapped, retro_tokenizer, PROMPT, retriever=None, max_new_tokens=3, temperature=0).token_ids) == 3
