"""`retrofresh demo` refuses what it must not touch or cannot use, before it starts anything."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.demo import SHIPPED_CHECKPOINT, WORKDIR_MARKER, _prepare_workdir, _serve, demo
from model.server.ports import free_port
from model.waiting import ProcessExited


def run_demo(*args: str):
    # No time bound: "before any step" is what the output and the untouched directories show; how
    # long the refusal takes is mostly importing torch, seconds on a loaded machine.
    return CliRunner().invoke(demo, list(args))


def test_a_workdir_the_demo_did_not_make_is_refused_and_left_alone(tmp_path):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("three years of work")
    (workdir / "store").mkdir()  # even one holding a name the demo writes
    result = run_demo("--workdir", str(workdir), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "not made by `retrofresh demo`" in result.output and "Nothing was deleted" in result.output
    assert (workdir / "thesis.txt").read_text() == "three years of work" and (workdir / "store").is_dir()
    assert not (workdir / WORKDIR_MARKER).exists() and "1. Sample world" not in result.output


def test_the_demo_clears_only_what_it_wrote_in_a_workdir_it_made(tmp_path):
    workdir = tmp_path / "demo"
    _prepare_workdir(workdir)  # new
    (workdir / "store" / "versions").mkdir(parents=True)
    (workdir / "server.log").write_text("old log")
    (workdir / "notes.txt").write_text("a user's note, put here later")
    _prepare_workdir(workdir)  # an earlier demo's: its own files go, nothing else
    assert sorted(p.name for p in workdir.iterdir()) == [WORKDIR_MARKER, "notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _prepare_workdir(empty)  # an empty directory is taken as it is
    assert [p.name for p in empty.iterdir()] == [WORKDIR_MARKER]


@pytest.mark.parametrize("damage, message", [
    ("not-a-checkpoint", "is not a retrofresh checkpoint: no config.json; name the directory `retrofresh train --out`"),
    ("truncated", "model.safetensors is damaged or truncated"),
])
def test_a_bad_checkpoint_is_refused_before_any_step(tmp_path, damage, message):
    checkpoint = tmp_path / "checkpoint"
    if damage == "not-a-checkpoint":
        checkpoint.mkdir()
        (checkpoint / "notes.txt").write_text("not a model")
    else:
        shutil.copytree(SHIPPED_CHECKPOINT, checkpoint)
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_demo("--workdir", str(tmp_path / "demo"), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint))
    assert result.exit_code == 1 and message in result.output and str(checkpoint) in result.output, result.output
    assert "1. Sample world" not in result.output and not (tmp_path / "demo").exists()


@pytest.mark.integration
def test_a_server_that_exits_while_starting_is_reported_at_once_with_its_log(tmp_path):
    # Weights whose config names one more layer: the checks without weights pass, loading them fails.
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(SHIPPED_CHECKPOINT, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "n_layers": config["n_layers"] + 1}))
    started = time.monotonic()
    with pytest.raises(ProcessExited, match="does not fit the model") as exited:
        _serve(checkpoint, str(tmp_path / "store"), free_port(), tmp_path / "server.log", timeout_s=170)
    assert time.monotonic() - started < 120 and str(tmp_path / "server.log") in str(exited.value)
    assert "Connection refused" not in str(exited.value)
