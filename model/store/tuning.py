"""Recall tuned per version: the smallest IVF ``nprobe`` whose recall@k against exact search meets a target.

A fixed ``nprobe`` gives a recall that drifts with the store's size and shape (0.93 at 200k chunks,
0.98 at 1M in ``bench.index``), so each version is measured when it is validated: a seeded sample
of its own live keys (read back from its indexes) are the queries, exact search is the same
indexes with every inverted list probed, and recall@k is the share of each query's k nearest
*other* chunks (the query's own chunk is left out on both sides: a real query is not in the index)
that the tuned search also returns. The smallest ``nprobe`` that meets the target goes into the
manifest's ``search``; servers then search with it.

"Exact" here means exhaustive over the stored codes: the SQ8 codec's own error (about 1% of
recall@2 in ``bench.index``) is not what ``nprobe`` can buy back, so it is not counted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

LOG = logging.getLogger(__name__)

DEFAULT_TARGET = 0.95
DEFAULT_K = 2  # RETRO retrieves 2 neighbours per chunk
DEFAULT_QUERIES = 200  # recall@2 over 200 queries: standard error ~0.01 near 0.95


@dataclass
class Tuning:
    """What tuning measured on one version.

    Attributes:
        nprobe: the smallest nprobe meeting the target (the largest tried if none did; unchanged
            when the version has no IVF shard).
        recall: recall@k at that nprobe.
        target: the recall asked for.
        k: neighbours per query.
        queries: sampled keys used as queries.
        met: whether ``recall >= target``.
        curve: (nprobe, recall) for every nprobe tried, ascending.
        seconds: time spent measuring.
    """

    nprobe: int
    recall: float
    target: float
    k: int
    queries: int
    met: bool
    curve: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict:
        out = asdict(self)
        out["recall"] = round(self.recall, 4)
        out["seconds"] = round(self.seconds, 3)
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


def tune_nprobe(view, *, target: float = DEFAULT_TARGET, k: int = DEFAULT_K, queries: int = DEFAULT_QUERIES, seed: int = 0) -> Tuning:
    """Measure recall@k of a view against exhaustive search and find the smallest nprobe meeting ``target``.

    Doubles nprobe from 1 until the target is met, then bisects between the last miss and the
    first hit (recall grows with nprobe).

    Args:
        view: an open :class:`model.store.IndexView`.
        target: least recall@k wanted, in (0, 1].
        k: neighbours per query.
        queries: keys to sample as queries.
        seed: the sample's seed.

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
    truth = _others(view.search_ids(keys, k + 1, nprobe=exhaustive), own, k)
    measured: dict[int, float] = {}

    def recall(nprobe: int) -> float:
        if nprobe not in measured:
            measured[nprobe] = recall_at_k(_others(view.search_ids(keys, k + 1, nprobe=nprobe), own, k), truth)
        return measured[nprobe]

    low, high = 0, 1  # recall(low) < target (0: nothing probed), recall(high) to be checked
    while high < exhaustive and recall(high) < target:
        low, high = high, min(2 * high, exhaustive)
    if high >= exhaustive:
        high = exhaustive
        measured.setdefault(exhaustive, 1.0)  # the reference itself
    while high - low > 1:
        middle = (low + high) // 2
        if recall(middle) >= target:
            high = middle
        else:
            low = middle
    result = Tuning(
        nprobe=high, recall=recall(high), target=target, k=k, queries=len(own), met=recall(high) >= target,
        curve=sorted(measured.items()), seconds=time.perf_counter() - start,
    )
    LOG.info("tuned %s: nprobe %d gives recall@%d %.3f (target %.2f, %d queries, %.1fs)",
             view.version, result.nprobe, k, result.recall, target, result.queries, result.seconds)
    return result
