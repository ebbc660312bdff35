"""Beam counters for the ingest job: one namespace, one counter per outcome, read back after a run."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

LOG = logging.getLogger(__name__)

NAMESPACE = "retrofresh"

# Always present in IngestResult.metrics (zero when nothing happened), so callers can index them.
CORE_COUNTERS = (
    "fetched",
    "not_modified",
    "robots_blocked",
    "failed",
    "gone",
    "new",
    "changed",
    "unchanged",
    "deleted",
    "chunks",
    "tombstones",
    "documents",
)


def count(name: str, n: int = 1) -> None:
    """Add n to the job counter ``name`` (no-op for n == 0)."""
    if n:
        Metrics.counter(NAMESPACE, name).inc(n)


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Add the block's wall time, in milliseconds, to the counter ``ms_<step>``.

    Wrap the work only, never a ``yield`` of a DoFn: fused downstream stages run inside it.
    """
    started = time.perf_counter()
    try:
        yield
    finally:
        count(f"ms_{step}", max(1, round(1000 * (time.perf_counter() - started))))


def count_failure(reason: str) -> None:
    """Count one failed fetch or extraction: ``failed`` and ``failed_<reason>``."""
    count("failed")
    count(f"failed_{reason}")


def collect(result) -> dict[str, int]:
    """Sum the job's counters over all steps.

    Args:
        result: a finished ``PipelineResult``.

    Returns:
        Counter name -> value; every name in CORE_COUNTERS is present.
    """
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (AttributeError, NotImplementedError) as exc:  # a dry run has no metrics
        LOG.debug("no metrics from %r: %s", result, exc)
        return _totals([])
    return _totals((c.key.metric, c.committed if c.committed is not None else c.attempted) for c in counters)


def from_container(container) -> dict[str, int]:
    """The job's counters in a Beam ``MetricsContainer`` (a run outside a runner), as :func:`collect`."""
    counters = container.get_cumulative().counters.items()
    return _totals((key.metric, value) for key, value in counters if key.metric.namespace == NAMESPACE)


def _totals(pairs) -> dict[str, int]:
    """(MetricName, value) pairs -> name -> summed value, with every CORE_COUNTERS name present."""
    totals = {name: 0 for name in CORE_COUNTERS}
    for metric, value in pairs:
        totals[metric.name] = totals.get(metric.name, 0) + int(value or 0)
    return totals
