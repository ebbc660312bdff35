"""Checkpoints written by older code load and give the answers they gave then.

tests/fixtures/checkpoints/ holds a tiny RETRO and a RETRO-fitted tiny GPT-2 saved by main at
e2ee695 (before the RETRO blocks and the compatibility contract were restructured), each with the
full-forward, retrieval-off and cached-decoding logits that code computed; those logits for the
shipped demo checkpoint; and the demo checkpoint's fact-check margins from the same code. Their
configs hold the embedder and tokenizer as plain dicts, as every checkpoint written so far does.

The logits were computed on another CPU than the one running this test, whose kernels add in
another order: they are compared within tests/fixtures/numerics.py's tolerance (fp32, scaled to
their magnitude), their argmax must be the same, and the fact-check margins must agree to
1e-3 nats. A change to what the network computes (the CCA's keys, its shift, a mask) moves logits
by orders of magnitude more than that and fails here.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.network.checkpoint import load_checkpoint
from tests.fixtures.checkpoints.write_legacy import (
    DEMO_CHECKPOINT, DEMO_FACT_MARGINS, DEMO_OUTPUTS, DEMO_POSITIONS, POSITIONS, RETRO_DIR, RETROFIT_DIR, fact_margins, outputs,
)
from tests.fixtures.numerics import MARGIN_NATS, assert_close, tolerance

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]


def assert_same_outputs(model, expected: dict[str, torch.Tensor], positions) -> None:
    got = outputs(model, {name: expected[name] for name in ("ids", "neighbours", "mask")}, positions)
    for name in ("full", "off", "cached"):
        assert_close(got[name], expected[name], msg=f"{name} logits")
        # The same prediction everywhere; a position whose top two logits are closer than the
        # kernels' tolerance could flip legitimately (none of the stored ones is).
        top2 = expected[name].topk(2, dim=-1).values
        decided = (top2[..., 0] - top2[..., 1]) > 2 * tolerance(expected[name])["atol"]
        same = got[name].argmax(-1) == expected[name].argmax(-1)
        assert decided.all() and (same | ~decided).all(), f"{name}: argmax changed at {(~same).nonzero().tolist()}"


@pytest.mark.parametrize("directory", [RETRO_DIR, RETROFIT_DIR], ids=["retro", "retrofit"])
def test_old_checkpoint_loads_and_gives_the_same_logits(directory: Path):
    model, _ = load_checkpoint(directory)
    assert_same_outputs(model, load_file(str(directory / "expected.safetensors")), POSITIONS)


def test_demo_checkpoint_gives_the_same_logits():
    model, _ = load_checkpoint(DEMO_CHECKPOINT)
    assert model.config.cca_previous_token_keys
    assert_same_outputs(model, load_file(str(DEMO_OUTPUTS)), DEMO_POSITIONS)


@pytest.mark.parametrize("edition", ["before", "after"])
def test_demo_checkpoint_gives_the_same_fact_check_margins(edition):
    """The demo's question (old or new value?) read with edition 0's pages and edition 1's: the same margins, in nats."""
    model, tokenizer = load_checkpoint(DEMO_CHECKPOINT)
    stored = json.loads(DEMO_FACT_MARGINS.read_text())
    facts = stored["facts"]
    got = fact_margins(model, tokenizer, facts, stored["documents"][edition])
    expected = [f[f"margin_{edition}"] for f in facts]
    assert got == pytest.approx(expected, abs=MARGIN_NATS), [f["fact"] for f in facts]
    assert [m > 0 for m in got] == [edition == "after"] * len(facts)  # the answers: old before the refresh, new after


@pytest.mark.parametrize("directory", [RETRO_DIR, DEMO_CHECKPOINT], ids=["retro", "demo"])
def test_an_old_checkpoint_saved_again_is_the_same_bytes(directory: Path, tmp_path):
    from model.contracts.compat import EmbedderSpec, TokenizerInfo

    model, tokenizer = load_checkpoint(directory)
    assert isinstance(model.config.embedder, EmbedderSpec) and isinstance(model.config.tokenizer, TokenizerInfo)
    model.save_pretrained(tmp_path, tokenizer=tokenizer if (directory / "tokenizer.json").exists() else None)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).read_bytes() == (directory / name).read_bytes(), name
