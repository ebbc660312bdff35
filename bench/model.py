"""Benchmark the RETRO network against retro-pytorch (lucidrains) at the same size, in one run.

    python -m bench.model [--quick] [--json] [--gpu]

Both networks get the same vocabulary, width, decoder depth and CCA layers, encoder depth, heads,
chunk size (64), neighbour length (128), k and sequence length, and the same random token data.

- training: forward + backward + optimizer step on a batch of windows with k neighbours per
  chunk; each library's own optimizer set-up (ours: ``model.training.loop.make_optimizer``;
  theirs: ``retro_pytorch.optimizer.get_optimizer``). Tokens per second, median of ROUNDS
  rounds, the two sides interleaved so a busy machine slows both alike.
- generation: 256 new tokens (128 with --quick) after a 64-token prompt, one intra-op thread on CPU, neighbours retrieved at every completed
  chunk from the same in-memory random "retriever". Ours: ``model.generation.generate`` (KV
  cache, neighbours encoded once per chunk). Theirs: the loop of ``TrainingWrapper.generate``
  (a whole forward pass over the sequence per token).

``--gpu`` runs the paper-like 185M configuration on CUDA with bf16 autocast. retro-pytorch is
installed by ``make bench-deps`` (pip --no-deps, see ../shared/NOTES.md). Writes
bench/results/model.json and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

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
LR = 3e-4
SEED = 0
TARGETS = {"train_ratio_vs_retro_pytorch": 1.5, "generate_ratio_vs_retro_pytorch": 10.0}
RESULTS = Path(__file__).parent / "results" / "model.json"

LOG = logging.getLogger("bench.model")


class RandomRetriever:
    """k neighbours of random tokens per query: the same cheap source for both networks."""

    def __init__(self, vocab: int, seed: int):
        self.vocab = vocab
        self.gen = torch.Generator().manual_seed(seed)

    def tokens(self, n_queries: int, k: int) -> torch.Tensor:
        return torch.randint(1, self.vocab, (n_queries, k, NEIGHBOUR_TOKENS), generator=self.gen)

    def retrieve(self, texts, k, *, exclude_doc_ids=None):
        from model.retrieval import Neighbour

        out = []
        for row in self.tokens(len(texts), k).tolist():
            out.append([Neighbour(chunk_id=j, doc_id="bench", url="", text="", tokens=t[:CHUNK_TOKENS], continuation=t[CHUNK_TOKENS:], score=1.0) for j, t in enumerate(row)])
        return out


def build_ours(cfg: dict, device: torch.device):
    from model.config import RetroConfig
    from model.retro import Retro

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


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()  # fp32 on CPU: bf16 is several times slower there


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steppers(ours, theirs, cfg: dict, device: torch.device):
    """Two closures, each running one training step on the same data."""
    from retro_pytorch.optimizer import get_optimizer

    from model.training.loop import TrainConfig, make_optimizer

    g = torch.Generator().manual_seed(SEED)
    B, T, k = cfg["batch_size"], cfg["seq_len"], cfg["k"]
    seq = torch.randint(1, cfg["vocab_size"], (B, T + 1), generator=g).to(device)
    neighbours = torch.randint(1, cfg["vocab_size"], (B, T // CHUNK_TOKENS, k, NEIGHBOUR_TOKENS), generator=g).to(device)
    opt_ours = make_optimizer(ours, TrainConfig(lr=LR, device=device.type))
    opt_theirs = get_optimizer(list(theirs.parameters()), lr=LR)
    ours.train()
    theirs.train()

    def step_ours():
        with autocast(device):
            _, loss = ours(seq[:, :-1], neighbours, targets=seq[:, 1:])
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()

    def step_theirs():
        with autocast(device):
            loss = theirs(seq, neighbours, return_loss=True)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()

    return step_ours, step_theirs, B * T


def timed(fn, repeats: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def generate_theirs(theirs, prompt: torch.Tensor, retriever: RandomRetriever, k: int, device: torch.device, new_tokens: int) -> int:
    """retro-pytorch's sampling loop (TrainingWrapper.generate), minus faiss: a full forward per token."""
    from retro_pytorch.training import gumbel_sample, top_k

    theirs.eval()
    out = prompt.to(device)
    L = out.shape[1] // CHUNK_TOKENS
    retrieved = retriever.tokens(L, k)[None].to(device) if L else None
    for _ in range(new_tokens):
        with autocast(device):
            logits = theirs(out, retrieved=retrieved)[:, -1]
        sampled = gumbel_sample(top_k(logits.float(), thres=0.9), temperature=1.0, dim=-1)
        out = torch.cat((out, sampled[:, None]), dim=1)
        if out.shape[1] % CHUNK_TOKENS == 0:
            fresh = retriever.tokens(1, k)[None].to(device)
            retrieved = fresh if retrieved is None else torch.cat((retrieved, fresh), dim=1)
    return new_tokens


def generate_ours(ours, tokenizer, prompt_text: str, retriever: RandomRetriever, k: int, device: torch.device, new_tokens: int) -> int:
    from model.generation import generate

    with autocast(device):
        result = generate(ours, tokenizer, prompt_text, retriever=retriever, k=k, max_new_tokens=new_tokens, temperature=1.0, top_k=50, seed=SEED, stop_at_eos=False)
    return len(result.token_ids)


def run(quick: bool, gpu: bool) -> dict:
    from model.tokenizer import RetroTokenizer

    device = torch.device("cuda" if gpu else "cpu")
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA; this machine has none")
    cfg = GPU_CONFIG if gpu else CPU_CONFIG
    steps = QUICK_TRAIN_STEPS if quick else TRAIN_STEPS
    rounds = QUICK_ROUNDS if quick else ROUNDS
    torch.manual_seed(SEED)
    ours, theirs = build_ours(cfg, device), build_theirs(cfg, device)
    step_ours, step_theirs, tokens_per_step = train_steppers(ours, theirs, cfg, device)
    step_ours(), step_theirs()  # warm-up: allocator, kernels, optimizer state
    train = {"ours": [], "retro_pytorch": []}
    for r in range(rounds):
        for name, fn in (("ours", step_ours), ("retro_pytorch", step_theirs)):
            seconds = timed(fn, steps, device)
            train[name].append(tokens_per_step * steps / seconds)
            LOG.info("round %d train %s: %.0f tokens/s", r, name, train[name][-1])
    del step_ours, step_theirs

    tokenizer = RetroTokenizer.load()
    g = torch.Generator().manual_seed(SEED + 1)
    prompt_text = tokenizer.decode(torch.randint(1, min(tokenizer.vocab_size, cfg["vocab_size"]), (PROMPT_TOKENS,), generator=g).tolist())
    prompt_ids = torch.tensor([tokenizer.encode(prompt_text)])  # exactly the tokens our side starts from
    gen = {"ours": [], "retro_pytorch": []}
    new_tokens = QUICK_NEW_TOKENS if quick else NEW_TOKENS
    threads = torch.get_num_threads()
    if GENERATE_THREADS and not gpu:
        torch.set_num_threads(GENERATE_THREADS)
    try:
        for r in range(rounds):
            start = time.perf_counter()
            n = generate_ours(ours.eval(), tokenizer, prompt_text, RandomRetriever(cfg["vocab_size"], SEED), cfg["k"], device, new_tokens)
            sync(device)
            gen["ours"].append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            n = generate_theirs(theirs, prompt_ids, RandomRetriever(cfg["vocab_size"], SEED), cfg["k"], device, new_tokens)
            sync(device)
            gen["retro_pytorch"].append(n / (time.perf_counter() - start))
            LOG.info("round %d generate: ours %.1f, retro_pytorch %.1f tokens/s", r, gen["ours"][-1], gen["retro_pytorch"][-1])
    finally:
        torch.set_num_threads(threads)

    train_med = {k: statistics.median(v) for k, v in train.items()}
    gen_med = {k: statistics.median(v) for k, v in gen.items()}
    result = {
        "benchmark": "model",
        "quick": quick,
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "config": {**cfg, "cca_layers": list(cfg["cca_layers"]), "chunk_tokens": CHUNK_TOKENS, "neighbour_tokens": NEIGHBOUR_TOKENS,
                   "train_steps_per_round": steps, "rounds": rounds, "new_tokens": new_tokens, "prompt_tokens": PROMPT_TOKENS,
                   "generate_threads": None if gpu else (GENERATE_THREADS or threads), "train_threads": None if gpu else threads,
                   "precision": "bf16 autocast" if gpu else "fp32"},
        "params": {"ours": sum(p.numel() for p in ours.parameters()), "retro_pytorch": sum(p.numel() for p in theirs.parameters())},
        "train_tokens_per_s": train_med,
        "generate_tokens_per_s": gen_med,
        "train_ratio_vs_retro_pytorch": train_med["ours"] / train_med["retro_pytorch"],
        "generate_ratio_vs_retro_pytorch": gen_med["ours"] / gen_med["retro_pytorch"],
        "targets": TARGETS,
        "rounds": {"train": train, "generate": gen},
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
    }
    result["targets_met"] = {key: result[key] >= target for key, target in TARGETS.items()}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and one round")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--gpu", action="store_true", help="the paper-like 185M config on CUDA, bf16")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import retro_pytorch  # noqa: F401
    except ImportError as exc:
        sys.exit(f"retro-pytorch is not importable ({exc}); run `make bench-deps` first")
    result = run(args.quick, args.gpu)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
