"""The RETRO network: shapes, masks, causality, KV cache, save/load."""

import json
import subprocess
import sys

import pytest
import torch

from model.contracts.retrieval import Neighbour
from model.contracts.tokenizer import RetroTokenizer
from model.network.config import RetroConfig
from model.network.retro import IGNORE_INDEX, Retro, Rotary, _apply_rotary_real, apply_rotary, pack_neighbours
from tests.fixtures.numerics import assert_close, assert_differs

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

V, M, K, R = 256, 64, 2, 128


def tiny_config(**overrides) -> RetroConfig:
    base = dict(vocab_size=V, d_model=32, n_layers=3, n_heads=4, cca_layers=(2, 3), enc_d_model=32, enc_n_heads=4, max_seq_len=256)
    return RetroConfig(**{**base, **overrides})


@pytest.fixture(scope="module", params=[False, True], ids=["paper-cca", "previous-token-keys"])
def model(request) -> Retro:
    torch.manual_seed(0)
    return Retro(tiny_config(cca_previous_token_keys=request.param)).eval()


def batch(B=2, T=200, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    nb = torch.randint(0, V, (B, T // M, K, R), generator=g)
    return ids, nb


@torch.no_grad()
def test_shapes_and_loss(model):
    ids, nb = batch()
    logits = model(ids, nb)
    assert logits.shape == (2, 200, V)
    targets = torch.roll(ids, -1, 1)
    targets[:, -1] = IGNORE_INDEX
    logits2, loss = model(ids, nb, targets=targets)
    assert torch.equal(logits, logits2)
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.5  # near uniform at init


@torch.no_grad()
def test_shorter_than_a_chunk_and_retrieval_off(model):
    ids, _ = batch(T=40)
    empty = torch.zeros(2, 0, K, R, dtype=torch.long)
    assert torch.equal(model(ids, empty), model(ids))


@torch.no_grad()
def test_missing_neighbours_are_masked_explicitly(model):
    ids, nb = batch()
    off = model(ids)
    none_valid = torch.zeros(2, 3, K, dtype=torch.bool)
    assert torch.equal(model(ids, nb, none_valid), off)  # all masked is exactly retrieval off
    # A masked neighbour's tokens cannot matter, nor can masked tail tokens of a short neighbour.
    mask = torch.ones(2, 3, K, R, dtype=torch.bool)
    mask[0, 1, 1] = False
    mask[1, 0, 0, 100:] = False
    base = model(ids, nb, mask)
    nb2 = nb.clone()
    nb2[0, 1, 1] = (nb2[0, 1, 1] + 7) % V
    nb2[1, 0, 0, 100:] = (nb2[1, 0, 0, 100:] + 7) % V
    assert_close(model(ids, nb2, mask), base)
    # ...while a valid neighbour does matter.
    nb3 = nb.clone()
    nb3[0, 1, 0] = (nb3[0, 1, 0] + 7) % V
    assert_differs(model(ids, nb3, mask), base)
    # The per-neighbour (B, L, k) form equals the per-token form it expands to.
    per_nb = torch.ones(2, 3, K, dtype=torch.bool)
    per_nb[0, 1, 1] = False
    assert torch.equal(model(ids, nb, per_nb), model(ids, nb, per_nb[..., None].expand(-1, -1, -1, R)))


@torch.no_grad()
def test_causality_of_tokens_and_neighbours(model):
    ids, nb = batch()
    base = model(ids, nb)
    for t in (10, 63, 64, 150):
        ids2 = ids.clone()
        ids2[:, t] = (ids2[:, t] + 1) % V
        out = model(ids2, nb)
        assert_close(out[:, :t], base[:, :t], msg=f"logits before {t} changed")
        assert_differs(out[:, t], base[:, t])
    for u in range(3):
        nb2 = nb.clone()
        nb2[:, u] = (nb2[:, u] + 3) % V
        out = model(ids, nb2)
        first = (u + 1) * M - 1  # the last token of chunk u is the first to see its neighbours
        assert_close(out[:, :first], base[:, :first], msg=f"chunk {u}'s neighbours leaked before {first}")
        assert_differs(out[:, first], base[:, first])


@torch.no_grad()
@pytest.mark.parametrize("prompt_len", [1, 63, 64, 70, 128])
def test_kv_cache_step_equals_full_forward(model, prompt_len):
    ids, nb = batch(B=2, T=200, seed=prompt_len)
    mask = torch.ones(2, 3, K, dtype=torch.bool)
    mask[0, 1] = False  # a chunk with no neighbours at all
    mask[1, 2, 1] = False
    full = model(ids, nb, mask)
    cache = model.new_cache(2, 200)
    L0 = prompt_len // M
    pieces = [model(ids[:, :prompt_len], nb[:, :L0], mask[:, :L0], cache=cache)]
    for t in range(prompt_len, 200):
        u = (t + 1) // M - 1
        done = (t + 1) % M == 0
        pieces.append(model(ids[:, t : t + 1], nb[:, u : u + 1] if done else None, mask[:, u : u + 1] if done else None, cache=cache))
    assert_close(torch.cat(pieces, 1), full)  # one-token steps run other kernels than the whole sequence


def test_previous_token_keys_need_square_cca():
    with pytest.raises(ValueError, match="must be equal"):
        tiny_config(enc_d_model=64, cca_previous_token_keys=True)


@torch.no_grad()
def test_kv_cache_without_retrieval(model):
    ids, _ = batch(T=150)
    cache = model.new_cache(2, 150)
    pieces = [model(ids[:, :5], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(5, 150)]
    assert_close(torch.cat(pieces, 1), model(ids))


def test_bad_inputs_are_clear_errors(model):
    ids, nb = batch()
    with pytest.raises(ValueError, match="neighbours must be"):
        model(ids, nb[:, :2])
    with pytest.raises(TypeError, match="integer"):
        model(ids, nb.float())
    with pytest.raises(ValueError, match="neighbour_mask"):
        model(ids, nb, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        model(ids, nb, torch.ones(2, 3, K))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 300, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(300, dtype=torch.long))
    cache = model.new_cache(1, 80)
    model(ids[:1, :10], cache=cache)
    with pytest.raises(ValueError, match="one token"):
        model(ids[:1, 10:12], cache=cache)


def test_rotary_in_real_arithmetic_equals_the_complex_form():
    """torch.compile runs the real-arithmetic rotation; eager runs the complex one: they must agree."""
    cos, sin = Rotary(16, 64, 10000.0)(5, 25)
    x = torch.randn(2, 3, 20, 16)
    assert_close(_apply_rotary_real(x, cos, sin), apply_rotary(x, cos, sin))
    assert_close(apply_rotary(x, cos * 0 + 1, sin * 0), x)  # angle 0: unchanged


def test_config_validation():
    with pytest.raises(ValueError, match="cca_layers"):
        tiny_config(cca_layers=(2, 5))
    with pytest.raises(ValueError, match="cca_layers"):
        tiny_config(cca_layers=(3, 2))
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(d_model=30)
    with pytest.raises(ValueError, match="unknown RetroConfig fields"):
        RetroConfig.from_dict({**tiny_config().to_dict(), "bogus": 1})
    assert RetroConfig.from_dict(json.loads(tiny_config().to_json())) == tiny_config()
    assert RetroConfig.preset("185m").cca_layers == (6, 9, 12)


def test_pack_neighbours():
    nbs = [
        [Neighbour(chunk_id=1, doc_id="a", url="u", text="t", tokens=[1, 2, 3], continuation=[4], score=0.9)],
        [],
        [[5] * 200, [6, 7], [8]],
    ]
    ids, mask = pack_neighbours(nbs, k=2, r=R, pad_id=0)
    assert ids.shape == mask.shape == (3, 2, R)
    assert ids[0, 0, :4].tolist() == [1, 2, 3, 4] and mask[0, 0].sum() == 4 and not mask[0, 1].any()
    assert not mask[1].any()
    assert mask[2, 0].all() and mask[2, 1].sum() == 2  # truncated to r, and only the first k kept


def test_save_load_round_trip(model, tmp_path):
    tokenizer = RetroTokenizer.load()
    model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["model_type"] == "retrofresh-retro" and config["format_version"] == 1
    assert config["tokenizer"]["sha256"] == tokenizer.sha256
    loaded = Retro.from_pretrained(tmp_path / "ckpt")
    ids, nb = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, nb), model(ids, nb))
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()  # tying survives

    from model.network.checkpoint import load_checkpoint

    loaded2, tok2 = load_checkpoint(tmp_path / "ckpt")
    assert tok2.sha256 == tokenizer.sha256 and isinstance(loaded2, Retro)


def test_loading_bad_checkpoints_fails_clearly(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Retro.from_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type"):
        Retro.from_pretrained(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        Retro.from_pretrained(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**cfg, "d_model": 64, "n_heads": 4, "enc_d_model": 64, "head_dim": 16}))
    with pytest.raises(Exception, match="size|shape"):
        Retro.from_pretrained(tmp_path / "a")


def test_network_module_imports_no_retrieval_or_pipeline_code():
    code = (
        "import sys, model.network.retro, model.network.generation, model.network.scoring, model.network.checkpoint, model.training;"
        "bad = [m for m in ('faiss', 'apache_beam', 'prefect', 'flows', 'beam_jobs') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
