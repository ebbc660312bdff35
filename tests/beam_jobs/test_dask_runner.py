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

from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.runners.dask.overrides import dask_overrides  # noqa: E402

from beam_jobs.dask_runner import _metrics_only, _Translate  # noqa: E402


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
