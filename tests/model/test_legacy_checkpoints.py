"""Checkpoints written by older code load and give the logits they gave then.

tests/fixtures/checkpoints/ holds a tiny RETRO and a RETRO-fitted tiny GPT-2 saved by main at
e2ee695 (before the RETRO blocks and the compatibility contract were restructured), each with the
full-forward, retrieval-off and cached-decoding logits that code computed; and those logits for
the shipped demo checkpoint. Their configs hold the embedder and tokenizer as plain dicts, as
every checkpoint written so far does.

Compared to 1e-6 rather than bit for bit only so that another CPU's kernels may round
differently; on the machine that wrote them they are equal (torch.equal).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import load_checkpoint
from tests.fixtures.checkpoints.write_legacy import DEMO_CHECKPOINT, DEMO_OUTPUTS, DEMO_POSITIONS, POSITIONS, RETRO_DIR, RETROFIT_DIR, outputs

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_same_outputs(model, expected: dict[str, torch.Tensor], positions) -> None:
    got = outputs(model, {name: expected[name] for name in ("ids", "neighbours", "mask")}, positions)
    for name in ("full", "off", "cached"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=lambda m: f"{name} logits: {m}")


@pytest.mark.parametrize("directory", [RETRO_DIR, RETROFIT_DIR], ids=["retro", "retrofit"])
def test_old_checkpoint_loads_and_gives_the_same_logits(directory: Path):
    model, _ = load_checkpoint(directory)
    assert_same_outputs(model, load_file(str(directory / "expected.safetensors")), POSITIONS)


def test_demo_checkpoint_gives_the_same_logits():
    model, _ = load_checkpoint(DEMO_CHECKPOINT)
    assert model.config.cca_previous_token_keys
    assert_same_outputs(model, load_file(str(DEMO_OUTPUTS)), DEMO_POSITIONS)


@pytest.mark.parametrize("directory", [RETRO_DIR, DEMO_CHECKPOINT], ids=["retro", "demo"])
def test_an_old_checkpoint_saved_again_is_the_same_bytes(directory: Path, tmp_path):
    from model.compat import EmbedderSpec, TokenizerInfo

    model, tokenizer = load_checkpoint(directory)
    assert isinstance(model.config.embedder, EmbedderSpec) and isinstance(model.config.tokenizer, TokenizerInfo)
    model.save_pretrained(tmp_path, tokenizer=tokenizer if (directory / "tokenizer.json").exists() else None)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).read_bytes() == (directory / name).read_bytes(), name
