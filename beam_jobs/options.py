"""Pipeline options of the ingest job, and the runner presets (local, multi-process, Dask, Dataflow)."""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)

LOG = logging.getLogger(__name__)

# run_ingest(runner=...) -> the Beam runner it means. The local runners are the in-process
# FnApiRunner, named explicitly: Beam's DirectRunner first tries to download the Prism binary,
# which hangs or fails offline.
RUNNERS = {
    "local": "FnApiRunner",
    "multiprocess": "FnApiRunner",
    "dataflow": "DataflowRunner",
    # Beam's DaskRunner with what the ingest needs added (beam_jobs/dask_runner.py); named by path
    # so that dask is imported only for a Dask run.
    "dask": "beam_jobs.dask_runner.IngestDaskRunner",
}


class IngestOptions(PipelineOptions):
    """``--sources``, ``--store`` and the model choices, beside Beam's standard options."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--sources", help="sources YAML file (read on the launching machine)")
        parser.add_argument("--store", help="index store: a directory or gs://bucket/prefix")
        parser.add_argument("--embedder", default=None, help="local Hugging Face encoder dir on the workers (default: bundled all-MiniLM-L6-v2)")
        parser.add_argument("--tokenizer", default=None, help="tokenizer.json or checkpoint dir (default: the store's, else the bundled one)")
        parser.add_argument("--embed_batch_size", type=int, default=64, help="largest embedding batch")
        parser.add_argument("--torch_threads", type=int, default=None, help="torch threads per embedding model")
        parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                            help="the encoder's precision; auto: bf16 where a worker runs it faster (default: RETROFRESH_PRECISION, else auto)")


def pipeline_options(runner: str = "local", pipeline_args: list[str] | None = None, *, job_name: str | None = None) -> PipelineOptions:
    """Beam options for a runner preset; explicit ``pipeline_args`` win over the preset.

    Args:
        runner: "local" (in-process FnApiRunner), "multiprocess" (FnApiRunner with one worker
            process per core), "dask" (the workers of a running Dask scheduler, named by
            ``--dask_client_address=tcp://HOST:PORT``) or "dataflow"; a Beam runner name is
            accepted too.
        pipeline_args: standard Beam flags (``--runner``, ``--project``, ``--region``,
            ``--temp_location``, ``--sdk_container_image``, ``--dry_run=True``, ...).
        job_name: Dataflow job name when none is given.

    Returns:
        The options.
    """
    args = list(pipeline_args or [])
    options = PipelineOptions(args)
    standard = options.view_as(StandardOptions)
    explicit_runner = any(a == "--runner" or a.startswith("--runner=") for a in args)
    if not explicit_runner:
        standard.runner = RUNNERS.get(runner, runner)
    if str(standard.runner) in ("DirectRunner", "PrismRunner"):
        LOG.warning("%s first downloads the Prism binary (hangs or fails offline); runner='local' is the in-process FnApiRunner", standard.runner)
    if runner == "multiprocess" and not any(a.startswith("--direct_running_mode") for a in args):
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        if not any(a.startswith("--direct_num_workers") for a in args):
            import os

            direct.direct_num_workers = max(2, os.cpu_count() or 2)
    if standard.runner == RUNNERS["dask"]:
        from beam_jobs.dask_runner import check_options

        check_options(options)
    if is_dataflow(options):
        cloud = options.view_as(GoogleCloudOptions)
        if not cloud.job_name and job_name:
            cloud.job_name = job_name
    return options


def is_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    return "dataflow" in str(runner).lower()


def is_dry_run(options: PipelineOptions) -> bool:
    return bool(options.view_as(TestOptions).dry_run)
