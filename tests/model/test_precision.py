"""The precision decision (model.contracts.precision) and the bf16 path, held to fp32 within bf16's tolerance.

The rest of the suite runs in fp32, the reference (tests/conftest.py sets RETROFRESH_PRECISION);
these tests force bf16 where they need it, so they run the same on a CPU with or without bf16
instructions (where bf16 is emulated it is slower, never wrong).
"""

import logging

import pytest
import torch

from model.contracts import precision
from model.contracts.settings import Settings
from model.network.generation import generate
from model.network.scoring import score, token_losses
from tests.fixtures.numerics import approx, assert_close
from tests.fixtures.retro import PYDOC_PROMPT

pytestmark = pytest.mark.usefixtures("single_thread")


def test_forced_choices_and_a_clear_error_for_an_unknown_one():
    assert precision.resolve("fp32").precision == "fp32"
    assert precision.resolve("bf16", "cpu").precision == "bf16"
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16"):
        precision.resolve("fp16")


def test_auto_picks_bf16_only_when_the_probe_measures_it_faster(monkeypatch, caplog):
    for speedup, expected in ((3.0, "bf16"), (precision.MARGIN, "bf16"), (1.05, "fp32"), (0.25, "fp32")):
        monkeypatch.setattr(precision, "probe_speedup", lambda kind, s=speedup: s)
        with caplog.at_level(logging.INFO, logger="model.contracts.precision"):
            decision = precision._auto.__wrapped__("cpu")
        assert (decision.precision, decision.bf16_speedup) == (expected, speedup)
        assert f"{speedup:.2f}x" in caplog.text  # the log states the measured ratio


def test_auto_is_measured_once_per_process():
    first = precision.resolve("auto", "cpu")
    assert first.bf16_speedup is not None and first.bf16_speedup > 0
    assert precision.resolve("auto", torch.device("cpu")) is first


def test_fp32_turns_off_an_outer_autocast():
    a = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a.T).dtype == torch.bfloat16
        with precision.autocast("fp32", "cpu"):
            assert (a @ a.T).dtype == torch.float32
    with precision.autocast("bf16", "cpu"):
        assert (a @ a.T).dtype == torch.bfloat16


def test_settings_read_the_precision_and_refuse_a_bad_one(monkeypatch):
    monkeypatch.setenv("RETROFRESH_PRECISION", "bf16")
    assert Settings().precision == "bf16"
    monkeypatch.setenv("RETROFRESH_PRECISION", "half")
    with pytest.raises(ValueError, match="auto"):
        Settings()


def test_bf16_logits_and_scores_are_close_to_fp32(tiny_retro, retro_tokenizer, pydoc_retriever):
    ids = retro_tokenizer.encode(PYDOC_PROMPT)
    x = torch.tensor([ids])
    with torch.no_grad():
        want = tiny_retro(x)
        with precision.autocast("bf16", "cpu"):
            got = tiny_retro(x)
    assert got.dtype == torch.bfloat16
    # bf16 rounds every matmul's inputs to 8 significant bits: the suite's bf16 tolerance, units
    # of bf16 roundoff times the largest logit (measured here: 0.0028 off at magnitude 0.84).
    assert_close(got.float(), want, dtype=torch.bfloat16)

    losses = {p: token_losses(tiny_retro, ids, None, k=2, precision=p) for p in ("fp32", "bf16")}
    assert losses["bf16"].dtype == torch.float32
    assert float(losses["bf16"].mean()) == approx(float(losses["fp32"].mean()), dtype=torch.bfloat16)
    scored = {p: score(tiny_retro, retro_tokenizer, PYDOC_PROMPT, retriever=pydoc_retriever, precision=p) for p in ("fp32", "bf16")}
    assert scored["bf16"].neighbours_used == scored["fp32"].neighbours_used > 0
    assert scored["bf16"].loss == approx(scored["fp32"].loss, dtype=torch.bfloat16)


def test_bf16_generation_runs_with_the_kv_cache_and_retrieval(tiny_retro, retro_tokenizer, pydoc_retriever):
    result = generate(tiny_retro, retro_tokenizer, PYDOC_PROMPT, retriever=pydoc_retriever, max_new_tokens=70,
                      temperature=0, stop_at_eos=False, precision="bf16")
    assert len(result.token_ids) == 70 and result.retrievals >= 2  # crossed a chunk boundary in bf16


def test_a_bf16_training_step_stays_close_to_fp32(retro_tokenizer):
    from model.network.config import RetroConfig
    from model.network.retro import Retro
    from model.training.data import SequenceSet
    from model.training.loop import TrainConfig, make_optimizer, train_step

    ids = torch.tensor([retro_tokenizer.encode(PYDOC_PROMPT * 2)[:129]])
    data = SequenceSet(inputs=ids[:, :-1].contiguous(), targets=ids[:, 1:].contiguous())
    losses = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Retro(RetroConfig(vocab_size=retro_tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=4, cca_layers=(2,), max_seq_len=128))
        cfg = TrainConfig(steps=2, batch_size=1, warmup_steps=1, precision=name)
        optimizer = make_optimizer(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        losses[name] = [train_step(model, params, optimizer, data, cfg, step)[0] for step in range(2)]
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay fp32
    for bf16, fp32 in zip(losses["bf16"], losses["fp32"]):
        assert bf16 == approx(fp32, dtype=torch.bfloat16)


def test_train_config_refuses_an_unknown_precision():
    from model.training.loop import TrainConfig

    with pytest.raises(ValueError, match="unknown precision"):
        TrainConfig(precision="fp16")


def test_the_cli_scores_in_the_precision_it_is_given(tiny_checkpoint, monkeypatch):
    import json

    from click.testing import CliRunner

    from flows.cli import cli

    text = PYDOC_PROMPT[:300]
    reports = {}
    for flag in ("fp32", "bf16", None):  # None: RETROFRESH_PRECISION, which the suite pins to fp32
        args = ["score", "--checkpoint", str(tiny_checkpoint), "--text", text] + (["--precision", flag] if flag else [])
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 0, out.output
        reports[flag] = json.loads(out.output)
    assert [reports[f]["precision"] for f in ("fp32", "bf16", None)] == ["fp32", "bf16", "fp32"]
    assert reports[None]["no_retrieval"] == reports["fp32"]["no_retrieval"]
    assert reports["bf16"]["no_retrieval"]["loss"] == approx(reports["fp32"]["no_retrieval"]["loss"], dtype=torch.bfloat16)
    out = CliRunner().invoke(cli, ["score", "--checkpoint", str(tiny_checkpoint), "--text", text, "--precision", "fp16"])
    assert out.exit_code == 2 and "'fp16' is not one of 'auto', 'fp32', 'bf16'" in out.output


def test_the_server_runtime_runs_model_and_query_embedder_in_the_settings_precision(tiny_checkpoint, tmp_path):
    from model.server.runtime import load_runtime

    runtime = load_runtime(Settings(checkpoint=tiny_checkpoint, store=str(tmp_path / "store"), cache_dir=tmp_path / "cache", precision="bf16"))
    assert runtime.precision.precision == runtime.embedder.inner.precision.precision == "bf16"
