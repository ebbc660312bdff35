"""The training loop: AdamW, warmup + cosine, clipping, bf16 autocast where faster, eval with and without retrieval, resume."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from model.contracts.precision import autocast, check as check_precision, resolve as resolve_precision
from model.training.data import SequenceSet
from model.training.mix import NeighbourMix

LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Knobs of one training run (saved with every checkpoint)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 4
    checkpoint_every: int = 0  # 0: only at the end (when out_dir is set)
    out_dir: str | None = None
    device: str = "cpu"
    compile: bool = False  # torch.compile the training forward (fuses norms, rotary, GELU; pays off on GPU)
    # "fp32" (the reference), "bf16" (autocast) or "auto" (bf16 where this device runs it faster:
    # model.contracts.precision). The CLI passes auto.
    precision: str = "fp32"
    seed: int = 0
    progress: bool = True
    # The neighbour mix (model.training.mix): what teaches a small model to read its neighbours.
    own_passage_rate: float = 0.0
    neighbour_dropout: float = 0.0
    # Stop after the step that passes this many minutes of training (0: run every step). The
    # schedule stays the one of `steps`, so a run cut short ends at a higher learning rate.
    max_minutes: float = 0.0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        self.neighbour_mix()  # validates the rates
        check_precision(self.precision)

    def neighbour_mix(self) -> NeighbourMix:
        return NeighbourMix(own_passage_rate=self.own_passage_rate, dropout=self.neighbour_dropout)


@dataclass
class EvalPoint:
    step: int
    loss_retrieval: float | None  # None when the data has no neighbours
    loss_no_retrieval: float


@dataclass
class TrainResult:
    steps: int
    train_loss: float  # mean of the last few steps
    tokens_per_s: float
    evals: list[EvalPoint] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; matrices decay, gains and biases do not (nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel per step instead of a dozen elementwise ops per parameter (CPU and CUDA).
    fused = torch.device(cfg.device).type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def train_step(forward, params: list[torch.nn.Parameter], optimizer, train_set: SequenceSet, cfg: TrainConfig, step: int) -> tuple[float, int]:
    """One optimizer step on the batch of (seed, step), at the schedule's learning rate for step.

    Args:
        forward: the model, or its compiled wrapper.
        params: the trainable parameters (clipped together).
        optimizer: from :func:`make_optimizer`.
        train_set: training windows.
        cfg: the run's knobs (batch size, seed, schedule, clipping, device).
        step: 0-based step number.

    Returns:
        The step's loss and the tokens its batch held.
    """
    device = torch.device(cfg.device)
    # The batch depends only on (seed, step): a resumed run sees exactly the batches it would have.
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    index = torch.randint(0, len(train_set), (cfg.batch_size,), generator=gen)
    batch = train_set.batch(index, device, mix=cfg.neighbour_mix(), generator=gen)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    with autocast(cfg.precision, device):
        _, loss = forward(**batch)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    return value, batch["input_ids"].numel()


@torch.no_grad()
def evaluate(model, data: SequenceSet, cfg: TrainConfig, *, retrieval: bool) -> float:
    """Mean loss over the first eval_batches batches of data (the same ones every time)."""
    device = torch.device(cfg.device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for b in range(cfg.eval_batches):
            if b * cfg.batch_size >= len(data):
                break
            index = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(data)))
            batch = data.batch(index, device, retrieval=retrieval)
            with autocast(cfg.precision, device):
                _, loss = model(**batch)
            valid = int((batch["targets"] != -100).sum())
            total += loss.item() * valid
            count += valid
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _eval_point(model, eval_set: SequenceSet, cfg: TrainConfig, step: int) -> EvalPoint:
    with_r = evaluate(model, eval_set, cfg, retrieval=True) if eval_set.neighbours is not None else None
    point = EvalPoint(step, with_r, evaluate(model, eval_set, cfg, retrieval=False))
    LOG.info("step %d eval loss: retrieval %s, no retrieval %.4f", step, f"{with_r:.4f}" if with_r is not None else "-", point.loss_no_retrieval)
    return point


def save_checkpoint(model, optimizer, cfg: TrainConfig, step: int, tokenizer=None, extra: dict | None = None) -> Path:
    """Weights + tokenizer via ``save_pretrained``, optimizer state beside them (no pickle)."""
    from model.network.checkpoint import save_training_state

    out = Path(cfg.out_dir)
    model.save_pretrained(out, tokenizer=tokenizer)
    save_training_state(out, optimizer, step=step, extra={"train_config": asdict(cfg), **(extra or {})})
    LOG.info("checkpoint at step %d written to %s", step, out)
    return out


def train(
    model,
    train_set: SequenceSet,
    eval_set: SequenceSet | None,
    cfg: TrainConfig,
    *,
    tokenizer=None,
    resume: bool = False,
    extra: dict | None = None,
) -> TrainResult:
    """Train ``model`` (a Retro or a RetroFit) on precomputed windows.

    Args:
        model: takes ``(input_ids, neighbours, neighbour_mask, targets=)`` and returns ``(logits, loss)``.
        train_set: training windows (with neighbours, or without for a no-retrieval baseline).
        eval_set: held-out windows for the periodic eval; None skips it.
        cfg: the run's knobs.
        tokenizer: saved with each checkpoint.
        resume: continue from the checkpoint in ``cfg.out_dir`` (weights, optimizer, step).
        extra: JSON notes saved in the training state (data hash, store version).

    Returns:
        Steps run, final training loss, throughput and the eval history.
    """
    if len(train_set) == 0:
        raise ValueError("the training set is empty")
    device = torch.device(cfg.device)
    decision = resolve_precision(cfg.precision, device)
    LOG.info("training in %s on %s (%s)", decision.precision, device, decision.reason)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    start = 0
    if resume:
        from model.network.checkpoint import load_training_state

        if cfg.out_dir is None:
            raise ValueError("resume needs out_dir (the checkpoint to continue)")
        model.load_weights(cfg.out_dir)
        start, _ = load_training_state(cfg.out_dir, optimizer)
        LOG.info("resumed at step %d from %s", start, cfg.out_dir)
    result = TrainResult(steps=start, train_loss=float("nan"), tokens_per_s=0.0)
    steps = range(start, cfg.steps)
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(steps, desc="train", unit="step", initial=start, total=cfg.steps)
        steps = bar
    # The compiled wrapper shares the model's parameters; eval and checkpoints use the model itself.
    forward = torch.compile(model) if cfg.compile else model
    recent: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    for step in steps:
        value, batch_tokens = train_step(forward, params, optimizer, train_set, cfg, step)
        recent = (recent + [value])[-20:]
        tokens += batch_tokens
        elapsed = time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix(loss=f"{value:.3f}", tok_s=f"{tokens / elapsed:.0f}")
        done = step + 1
        if eval_set is not None and len(eval_set) and cfg.eval_every and done % cfg.eval_every == 0:
            result.evals.append(_eval_point(model, eval_set, cfg, done))
        if cfg.out_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(model, optimizer, cfg, done, tokenizer, extra)
        result.steps = done
        if cfg.max_minutes and elapsed >= 60 * cfg.max_minutes and done < cfg.steps:
            LOG.info("stopping at step %d of %d: %.1f minutes of training reached max_minutes=%g", done, cfg.steps, elapsed / 60, cfg.max_minutes)
            break
    elapsed = time.perf_counter() - t0
    result.train_loss = sum(recent) / len(recent) if recent else float("nan")
    result.tokens_per_s = tokens / elapsed if elapsed > 0 else 0.0
    if eval_set is not None and len(eval_set) and (not result.evals or result.evals[-1].step != result.steps):
        result.evals.append(_eval_point(model, eval_set, cfg, result.steps))
    if cfg.out_dir:
        save_checkpoint(model, optimizer, cfg, result.steps, tokenizer, extra)
    model.eval()
    return result
