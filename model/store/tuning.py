"""Recall tuned per version: the smallest IVF ``nprobe`` whose recall@k against exact search meets a target.

A fixed ``nprobe`` gives a recall that drifts with the store's size and shape (0.93 at 200k chunks,
0.98 at 1M in ``bench.index``), so each version is measured when it is validated: a seeded sample
of its own live keys (read back from its indexes) are the probe queries, each held out of its own
answers (its own chunk is no candidate: a real query is not in the index), and recall@k is the
share of each probe's k nearest chunks by exact search that the tuned search returns. The
smallest ``nprobe`` that meets the target goes into the manifest's ``search``; servers then search
with it.

The exact scores are not stored: the indexes hold codes (SQ8: one byte a dimension), and search
with every list probed ranks by the decoded keys. Measured against that, tuning would miss the
codec's own error (recall@2 0.979 of exact at 1M clustered keys in ``bench.scale``) and pick an
``nprobe`` that real queries find too small (0.942 at the nprobe tuned to 0.95 that way). So the
exact ranking is estimated: each candidate's exact score is its coded score plus the codec's
rounding error, whose spread follows from the quantizer's step per dimension
(:func:`model.store.faiss_index.score_error_std`); recall is averaged over seeded draws of that
error (at 1M: predicted 0.943 / 0.959 at nprobe 5 / 6, measured on fresh queries 0.940 / 0.957).
Where the codec alone keeps recall below the target, no ``nprobe`` reaches it: tuning says so
(``met`` False, ``ceiling``) and settles for the smallest ``nprobe`` within CEILING_SLACK of it.

The estimate comes from a sample of probes, and picking the smallest ``nprobe`` whose estimate
clears the target favours estimates that came out high (at 200k keys, ``bench.index --quick``:
0.958 estimated, 0.944 on fresh queries, at the nprobe tuned without a margin). So the ``goal`` is
the target plus one standard error of a recall near the target over that many probes
(``sqrt(t (1 - t) / probes)``: 0.015 for 200 probes at 0.95), capped by the ceiling.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

LOG = logging.getLogger(__name__)

DEFAULT_TARGET = 0.95
DEFAULT_K = 2  # RETRO retrieves 2 neighbours per chunk
DEFAULT_QUERIES = 200  # recall@2 over 200 queries: standard error ~0.01 near 0.95
CANDIDATES = 16  # candidates beyond k whose exact score may overtake the coded top k
ERROR_DRAWS = 32  # draws of the codec's error per probe
CEILING_SLACK = 0.005  # when the codec caps recall below the target: how close to the cap to tune


@dataclass
class Tuning:
    """What tuning measured on one version.

    Attributes:
        nprobe: the smallest nprobe meeting the target (when the codec keeps every nprobe below
            it: the smallest within CEILING_SLACK of ``ceiling``; unchanged when the version has
            no IVF shard).
        recall: recall@k against exact search at that nprobe (estimated: see the module).
        target: the recall asked for.
        k: neighbours per query.
        queries: sampled keys used as queries.
        met: whether ``recall >= target``.
        curve: (nprobe, recall) for every nprobe tried, ascending.
        seconds: time spent measuring.
        ceiling: recall@k with every list probed: what the codec allows.
        goal: the estimate an nprobe had to reach (the target plus one standard error, or just
            under the ceiling when that is lower).
    """

    nprobe: int
    recall: float
    target: float
    k: int
    queries: int
    met: bool
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    ceiling: float = 1.0
    goal: float = 0.0

    def summary(self) -> dict:
        out = asdict(self)
        out["recall"] = round(self.recall, 4)
        out["seconds"] = round(self.seconds, 3)
        out["ceiling"] = round(self.ceiling, 4)
        out["goal"] = round(self.goal, 4)
        out["curve"] = [[p, round(r, 4)] for p, r in self.curve]
        return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (ids, -1 for none) that ``found`` holds too."""
    hits, total = 0, 0
    for f, t in zip(found, truth):
        want = set(int(x) for x in t if x >= 0)
        hits += len(want & set(int(x) for x in f))
        total += len(want)
    return hits / total if total else 1.0


def _others(ids: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first k ids that are not the row's own chunk."""
    out = np.full((len(ids), k), -1, np.int64)
    for i, (row, me) in enumerate(zip(ids, own)):
        rest = [x for x in row if x != me and x >= 0][:k]
        out[i, : len(rest)] = rest
    return out


class ExactReference:
    """Each probe's k nearest chunks by exact score, drawn ERROR_DRAWS times (see the module).

    Args:
        ids, scores, shard_no: the probes' candidates by coded score with every list probed
            (:meth:`model.store.IndexView.search_scored`), the probe's own chunk removed.
        errors: per probe and shard, the spread of the codec's score error (0: exact).
        k: neighbours per probe.
        rng: the draws' generator.
    """

    def __init__(self, ids: np.ndarray, scores: np.ndarray, shard_no: np.ndarray, errors: np.ndarray, k: int, rng: np.random.Generator):
        spread = np.where(shard_no >= 0, np.take_along_axis(errors, np.maximum(shard_no, 0), axis=1), 0.0)
        exact = scores[None] + rng.standard_normal((ERROR_DRAWS, *scores.shape)) * spread[None]  # (draws, n, candidates)
        exact = np.where(ids[None] >= 0, exact, -np.inf)
        order = np.argsort(-exact, axis=2, kind="stable")[:, :, :k]
        self.truth = np.take_along_axis(np.broadcast_to(ids, exact.shape), order, axis=2)  # (draws, n, k)
        self.exact = not spread.any()

    def recall(self, found: np.ndarray) -> float:
        """Mean recall@k of ``found`` (n, k) over the draws."""
        if self.exact:
            return recall_at_k(found, self.truth[0])
        return float(np.mean([recall_at_k(found, truth) for truth in self.truth]))


def _without_own(ids: np.ndarray, scores: np.ndarray, shard_no: np.ndarray, own: np.ndarray, width: int):
    """Per row, the first ``width`` candidates that are not the row's own chunk."""
    keep = (ids != own[:, None]) & (ids >= 0)
    rank = np.where(keep, np.cumsum(keep, axis=1) - 1, width)
    out = [np.full((len(ids), width), fill, dtype) for fill, dtype in ((-1, np.int64), (-np.inf, np.float32), (-1, np.int32))]
    rows, cols = np.nonzero(rank < width)
    for target, source in zip(out, (ids, scores, shard_no)):
        target[rows, rank[rows, cols]] = source[rows, cols]
    return out


def tune_nprobe(view, *, target: float = DEFAULT_TARGET, k: int = DEFAULT_K, queries: int = DEFAULT_QUERIES, seed: int = 0) -> Tuning:
    """Estimate recall@k of a view against exact search and find the smallest nprobe meeting ``target``.

    Doubles nprobe from 1 until the target is met, then bisects between the last miss and the
    first hit (recall grows with nprobe).

    Args:
        view: an open :class:`model.store.IndexView`.
        target: least recall@k wanted, in (0, 1].
        k: neighbours per query.
        queries: keys to sample as queries.
        seed: the sample's (and the error draws') seed.

    Returns:
        The tuning (``nprobe`` is the view's own when it has no IVF shard: nothing to tune).
    """
    if not 0 < target <= 1:
        raise ValueError(f"the recall target must be in (0, 1], got {target}")
    start = time.perf_counter()
    current = view.manifest.search.nprobe
    exhaustive = view.max_nlist
    if exhaustive == 0 or view.count <= k:
        return Tuning(nprobe=current, recall=1.0, target=target, k=k, queries=0, met=True, seconds=time.perf_counter() - start)
    own, keys = view.sample_keys(queries, seed=seed)
    width = min(k + CANDIDATES, view.count - 1)
    candidates = _without_own(*view.search_scored(keys, width + 1, nprobe=exhaustive), own, width)
    reference = ExactReference(*candidates, view.score_errors(keys), k, np.random.default_rng(seed))
    measured: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in measured:
            found = candidates[0][:, :k] if nprobe >= exhaustive else _others(view.search_ids(keys, k + 1, nprobe=nprobe), own, k)
            measured[nprobe] = reference.recall(found)
        return measured[nprobe]

    ceiling = recall(exhaustive)
    goal = target + math.sqrt(target * (1 - target) / len(own))  # one standard error above the target
    if ceiling < goal:  # the codec caps recall: as close to the cap as is worth probing for
        goal = max(target, ceiling - CEILING_SLACK) if ceiling >= target else ceiling - CEILING_SLACK
    low, high = 0, 1  # recall(low) < goal (0: nothing probed), recall(high) to be checked
    while high < exhaustive and recall(high) < goal:
        low, high = high, min(2 * high, exhaustive)
    while high - low > 1:
        middle = (low + high) // 2
        if recall(middle) >= goal:
            high = middle
        else:
            low = middle
    result = Tuning(
        nprobe=high, recall=recall(high), target=target, k=k, queries=len(own), met=recall(high) >= target,
        curve=sorted(measured.items()), seconds=time.perf_counter() - start, ceiling=ceiling, goal=goal,
    )
    if ceiling < target:
        LOG.warning("%s: the index codes alone keep recall@%d at %.3f, below the target %.2f; tuned to nprobe %d "
                    "(recall %.3f). A finer codec (IndexPolicy(codec='SQfp16') or 'Flat') raises the ceiling",
                    view.version, k, ceiling, target, result.nprobe, result.recall)
    LOG.info("tuned %s: nprobe %d gives recall@%d %.3f against exact search (target %.2f, ceiling %.3f, %d queries, %.1fs)",
             view.version, result.nprobe, k, result.recall, target, ceiling, result.queries, result.seconds)
    return result
