"""The Dask translation of a pipeline, computed in this process (dask's synchronous scheduler).

Beam 2.77's own DaskRunner gives every consumer of a multi-output ParDo all its outputs (here:
the odd consumer saw 1, 2, 3, 4 and the even one each number twice), and counts nothing; these
check what beam_jobs/dask_runner.py does instead. The cluster path is tests/flows/test_dask_it.py.
"""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

pytest.importorskip("distributed", reason="needs the dask extra")

import dask  # noqa: E402
import dask.bag as db  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.runners.dask.overrides import dask_overrides  # noqa: E402

from beam_jobs.dask_runner import _metrics_only, _nothing, _Translate  # noqa: E402


class Split(beam.DoFn):
    def process(self, x, limit):
        Metrics.counter("test", "seen").inc()
        if x > limit:
            return
        if x % 2:
            yield beam.pvalue.TaggedOutput("odd", x)
        else:
            yield x


def test_each_output_tag_has_its_own_bag_side_inputs_are_whole_and_counters_come_back():
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    limit = p | "Limit" >> beam.Create([4])
    out = p | beam.Create([1, 2, 3, 4, 5]) | beam.ParDo(Split(), limit=beam.pvalue.AsSingleton(limit)).with_outputs("odd", main="even")
    keyed = (out.odd | "O" >> beam.Map(lambda x: ("odd", x)), out.even | "E" >> beam.Map(lambda x: ("even", x))) | beam.Flatten()
    keyed | beam.GroupByKey()
    p.replace_all(dask_overrides())
    visitor = _Translate({})
    p.visit(visitor)
    outputs = {node.full_label: bag for (node, tag), bag in visitor.outputs.items()}
    assert sorted(outputs["O"].compute(scheduler="sync")) == [("odd", 1), ("odd", 3)]
    assert sorted(outputs["E"].compute(scheduler="sync")) == [("even", 2), ("even", 4)]
    grouped = dict(outputs["GroupByKey/GroupByWindow"].compute(scheduler="sync"))
    assert sorted(grouped["odd"]) == [1, 3] and sorted(grouped["even"]) == [2, 4]
    counters = [c for bag, pardo in visitor.raw if pardo for c in bag.map_partitions(_metrics_only).compute(scheduler="sync")]
    assert sum(v for c in counters for k, v in c.items() if k.metric.name == "seen") == 5


UPSTREAM_RUNS: list[int] = []  # the synchronous scheduler runs every task in this process


class Upstream(beam.DoFn):
    def process(self, x):
        UPSTREAM_RUNS.append(x)
        yield x


def _compute_all(pipeline: beam.Pipeline) -> _Translate:
    pipeline.replace_all(dask_overrides())
    visitor = _Translate({})
    pipeline.visit(visitor)
    drained = db.concat([bag.map_partitions(_metrics_only if pardo else _nothing) for bag, pardo in visitor.raw])
    dask.optimize(drained)[0].compute(scheduler="sync")
    return visitor


def test_a_step_feeding_a_side_input_and_a_main_input_runs_once():
    # Before: the side input's bag went through to_delayed's own optimization, a private fused
    # copy of every upstream step, so the crawl ran once for the diff's side input and once more.
    UPSTREAM_RUNS.clear()
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    up = p | beam.Create(list(range(6))) | "Up" >> beam.ParDo(Upstream())
    up | "Use" >> beam.Map(lambda x, seen: x + len(seen), seen=beam.pvalue.AsList(up))
    _compute_all(p)
    assert sorted(UPSTREAM_RUNS) == list(range(6))


def test_group_by_key_shuffles_through_pure_tasks_not_a_directory_on_disk():
    # dask's disk shuffle appends each partition to a partd directory: a task dask runs twice
    # (stolen, or its worker lost) appends twice, and the published version held duplicate chunks.
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    p | beam.Create([("a", 1), ("b", 2), ("a", 3)]) | beam.GroupByKey()
    visitor = _compute_all(p)
    keys = {str(key) for bag, _ in visitor.raw for key in bag.__dask_graph__()}
    assert keys and not any("partd" in key or "groupby-part" in key for key in keys)
