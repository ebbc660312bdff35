"""Runner presets: explicit Beam flags win; Dataflow jobs get a name."""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, StandardOptions

from beam_jobs.options import is_dataflow, is_dry_run, pipeline_options


def test_local_presets_use_the_in_process_runner():
    local = pipeline_options("local", [])
    multi = pipeline_options("multiprocess", [])
    assert local.view_as(StandardOptions).runner == "FnApiRunner" == multi.view_as(StandardOptions).runner
    assert multi.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert multi.view_as(DirectOptions).direct_num_workers >= 2


def test_explicit_flags_win_and_dataflow_jobs_are_named():
    options = pipeline_options("local", ["--runner", "DataflowRunner", "--project", "p-1", "--dry_run=True"], job_name="retrofresh-ingest-v1")
    assert is_dataflow(options) and is_dry_run(options)
    assert options.view_as(GoogleCloudOptions).job_name == "retrofresh-ingest-v1"
    named = pipeline_options("dataflow", ["--job_name", "mine"], job_name="other")
    assert named.view_as(GoogleCloudOptions).job_name == "mine"
    assert pipeline_options("multiprocess", ["--direct_num_workers=3"]).view_as(DirectOptions).direct_num_workers == 3


def test_the_dask_preset_names_the_ingest_runner_and_needs_a_scheduler():
    from beam_jobs.dask_runner import MissingSchedulerAddress

    options = pipeline_options("dask", ["--dask_client_address=tcp://127.0.0.1:8786"])
    assert options.view_as(StandardOptions).runner == "beam_jobs.dask_runner.IngestDaskRunner"
    with pytest.raises(MissingSchedulerAddress, match="--dask_client_address=tcp://HOST:PORT"):
        pipeline_options("dask", [])
