"""The float precision the network and the embedder compute in: fp32, or bf16 autocast where it is faster.

One home for the decision. ``auto`` picks bf16 autocast on a CUDA device that supports it, and on
a CPU only when a short probe matmul (measured once per process, a few ms) ran faster under bf16
autocast than in fp32. Measured, torch 2.13, 2 threads: CPUs with bf16 instructions ran
2048×576×1536 matmuls 4-8× faster in bf16 (an Intel with AMX; an AMD EPYC with avx512_bf16), and an
Ice Lake Xeon without them (AVX-512, no avx512_bf16) ran them about 4× slower, since it emulates
bf16 (docs/MEASUREMENTS.md, "CPU precision and kernels"). So the choice is made per machine,
never once for all. ``fp32`` and ``bf16`` force either.
fp32 is the reference: library functions default to it, and the entry points a user runs (CLI,
server, ingest) default to ``auto``. torch is imported where it is used, so an ingest launcher
can check a choice without loading it.

Usage::

    decision = resolve("auto", "cpu")       # logs what it picked and the measured ratio
    with autocast(decision, "cpu"):
        logits = model(x)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 must beat fp32 by this factor on the probe to be picked: fp32 is the reference, so a tie
# (or probe noise on a busy machine) keeps it.
MARGIN = 1.1
# The probe: a matmul of the embedder's and the small models' shape (rows × 384 @ 384 × 1536),
# ~0.15 GFLOP, best of REPEATS runs of each precision, interleaved so load hits both alike.
PROBE_SHAPE = (128, 384, 1536)
REPEATS = 3


@dataclass(frozen=True)
class Decision:
    """What ``resolve`` picked.

    Attributes:
        precision: "fp32" or "bf16" (bf16 autocast; weights stay fp32).
        asked: what was asked for: "auto", "fp32" or "bf16".
        device: the torch device type it applies to ("cpu", "cuda", ...).
        bf16_speedup: fp32 time over bf16-autocast time of the probe matmul; None when not measured.
        reason: one line saying why.
    """

    precision: str
    asked: str
    device: str
    bf16_speedup: float | None = None
    reason: str = ""

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"


def check(choice: str) -> str:
    """``choice`` if it names a precision, else a ValueError that lists the choices."""
    if choice not in PRECISIONS:
        raise ValueError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISIONS)}")
    return choice


def _device_type(device) -> str:
    import torch

    return device.type if isinstance(device, torch.device) else torch.device(device).type


def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's bf16-related flags from /proc/cpuinfo (Linux; empty elsewhere). Logged, not decisive."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}))
    return ()


@functools.lru_cache(maxsize=None)
def probe_speedup(device_type: str = "cpu") -> float:
    """fp32 time / bf16-autocast time of the probe matmul on this device, measured once per process.

    Returns:
        Above 1 when bf16 autocast is faster.
    """
    import torch

    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device_type)
    b = torch.randn(k, n, generator=gen).to(device_type)

    def run(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            start = time.perf_counter()
            out = a @ b
            if device_type == "cuda":
                torch.cuda.synchronize()
            del out
            return time.perf_counter() - start

    run(False), run(True)  # the first bf16 call builds its kernel (oneDNN JIT): not part of the time
    fp32 = bf16 = float("inf")
    for _ in range(REPEATS):
        fp32 = min(fp32, run(False))
        bf16 = min(bf16, run(True))
    return fp32 / bf16


def resolve(choice: str | Decision = "fp32", device="cpu") -> Decision:
    """Decide the precision for ``device``.

    Args:
        choice: "auto", "fp32" or "bf16" (a Decision is returned as it is).
        device: a torch device or its name.

    Returns:
        The decision; ``auto`` logs it with the measured ratio (at INFO, once per process and device).

    Raises:
        ValueError: an unknown choice, or bf16 asked for on a device without it.
    """
    import torch

    if isinstance(choice, Decision):
        return choice
    check(choice)
    kind = _device_type(device)
    if choice == "fp32":
        return Decision("fp32", choice, kind, reason="fp32 asked for")
    if choice == "bf16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this CUDA device has no bf16; use --precision fp32")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"bf16 autocast is supported here on cpu and cuda, not {kind}; use --precision fp32")
        return Decision("bf16", choice, kind, reason="bf16 asked for")
    return _auto(kind)


@functools.lru_cache(maxsize=None)
def _auto(kind: str) -> Decision:
    import torch

    if kind == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        decision = Decision(precision, "auto", kind, reason=f"CUDA device {'with' if precision == 'bf16' else 'without'} bf16")
    elif kind == "cpu":
        speedup = probe_speedup(kind)
        precision = "bf16" if speedup >= MARGIN else "fp32"
        m, k, n = PROBE_SHAPE
        flags = ", ".join(cpu_bf16_flags()) or "none"
        decision = Decision(
            precision, "auto", kind, bf16_speedup=speedup,
            reason=f"a {m}x{k}x{n} matmul ran {speedup:.2f}x as fast under bf16 autocast as in fp32 "
                   f"(bf16 is picked at {MARGIN}x or more; CPU bf16 flags: {flags}; {torch.get_num_threads()} threads)",
        )
    else:
        decision = Decision("fp32", "auto", kind, reason=f"no bf16 autocast on {kind}")
    LOG.info("precision auto on %s: %s (%s)", kind, decision.precision, decision.reason)
    return decision


def autocast(decision: str | Decision, device="cpu"):
    """The context that runs a forward pass in ``decision``'s precision on ``device``.

    bf16 is autocast: weights stay fp32, matmuls and convolutions run in bf16, reductions such as
    softmax and norms stay fp32. fp32 turns autocast off, so a caller's own autocast cannot
    change the reference.
    """
    import torch

    decision = resolve(decision, device)
    kind = _device_type(device)
    if kind not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=decision.bf16)
