"""``retrofresh refresh`` (one refresh through the Prefect flow) and ``retrofresh flows`` (serve them).

Prefect, Beam and torch load only inside the commands, so ``retrofresh --help`` stays fast. With no
Prefect server configured (``PREFECT_API_URL`` unset), ``refresh`` starts a temporary local API
that stops with it, even when it is killed (``flows/common/temporary_api.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

LOG = logging.getLogger(__name__)


@click.command("refresh")
@click.option("--sources", "sources", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="sources file (YAML) [env RETROFRESH_SOURCES]")
@click.option("--store", "store", default=None, help="index store: a directory or gs://bucket/prefix [env RETROFRESH_STORE]")
@click.option("--runner", type=click.Choice(["local", "multiprocess", "dask", "dataflow"]), default="local", show_default=True,
              help="run the Beam job in this process (multiprocess: a worker per core), on a Dask cluster "
                   "(with --pipeline-arg=--dask_client_address=tcp://HOST:PORT), or submit it to Dataflow and follow it")
@click.option("--pipeline-arg", "pipeline_args", multiple=True, help="extra Beam pipeline argument (repeatable)")
@click.option("--server", "servers", multiple=True, help="server URL to notify after publishing (repeatable) [env RETROFRESH_SERVERS]")
@click.option("--compact-threshold", type=click.IntRange(min=1), default=None,
              help="compact when a new version has more shards than this")
@click.option("--max-delete-share", type=click.FloatRange(0.0, 1.0), default=None,
              help="the largest share of one source's documents this refresh may delete; a source over it keeps "
                   "its documents and is reported as failed, the rest publishes [sources file: max_delete_share, 0.5]")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="chunk with this tokenizer.json or checkpoint's tokenizer (a RETRO-fitted model's, to serve it) [default: the bundled one]")
@click.option("--json", "as_json", is_flag=True,
              help="print the summary as one JSON object on the last line; on failure the object is "
                   '{"published": false, "error": {"type", "message", "step"}, ...} and the exit status is 1')
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="append the run's whole log here, tracebacks included [default: <cache dir>/logs/refresh.log]")
@click.option("--verbose", is_flag=True, help="show tracebacks on the terminal too (they always go to the log file)")
def refresh(sources, store, runner, pipeline_args, servers, compact_threshold, max_delete_share, tokenizer_path, as_json, log_file, verbose):
    """Ingest the sources, validate the new index version and publish it (one Prefect flow run)."""
    from flows.refresh import refresh_corpus
    from flows.common.runlog import default_log_file, failure_message, flow_result, run_log
    from flows.common.temporary_api import prefect_api

    kwargs = {"runner": runner}
    if compact_threshold is not None:
        kwargs["compact_threshold"] = compact_threshold
    if max_delete_share is not None:
        kwargs["max_delete_share"] = max_delete_share
    if tokenizer_path is not None:
        kwargs["tokenizer_path"] = str(tokenizer_path)
    log_file = log_file or default_log_file("refresh")
    state = None
    try:
        # Without PREFECT_API_URL: a temporary API that stops with this process.
        with prefect_api(), run_log(log_file, verbose=verbose):
            state = refresh_corpus(
                sources=str(sources) if sources else None,
                store=store,
                pipeline_args=list(pipeline_args) or None,
                servers=list(servers) or None,
                return_state=True,
                **kwargs,
            )
            summary = flow_result(state)
    except Exception as error:  # noqa: BLE001 - report the flow's cause, whatever it was
        if as_json:
            _echo_failure(error, store, state)
        raise click.ClickException(failure_message("refresh", error, log_file, verbose=verbose)) from error
    if as_json:
        keys = ("version", "parent", "published", "documents", "chunks_added", "chunks_removed", "seconds")
        head = {key: summary[key] for key in keys}
        # Everything else follows; the contract is that the last line is the summary object.
        sys.stdout.flush()
        click.echo(json.dumps({**head, **{k: v for k, v in summary.items() if k not in head}}, sort_keys=False))
    else:
        docs = summary["documents"]
        verb = "published" if summary["published"] else "nothing changed; CURRENT is still"
        click.echo(
            f"{verb} {summary['version']} (parent {summary['parent']}): "
            + ", ".join(f"{n} {k.replace('_', '-')}" for k, n in docs.items())
            + f"; +{summary['chunks_added']} / -{summary['chunks_removed']} chunks in {summary['seconds']:.1f} s"
        )
    # What was skipped is said on every run, JSON or not (stderr keeps --json's stdout one object).
    for reason, n in summary.get("failures", {}).items():
        click.echo(f"skipped {n} failed: {reason.replace('_', ' ')} (kept as they were; {log_file} names them)", err=True)
    for failed in summary.get("failed_sources", []):
        click.echo(f"source failed: {failed['error']}", err=True)


def _echo_failure(error: BaseException, store: str | None, state) -> None:
    """Print the failure as the one JSON object of ``--json`` (the error follows on stderr)."""
    from flows.common.summary import RefreshFailure

    from model.contracts.settings import get_settings

    flow_run_id = getattr(getattr(state, "state_details", None), "flow_run_id", None)
    store = store or (str(get_settings().store) if get_settings().store else None)
    failure = RefreshFailure.from_error(error, store=store, flow_run_id=str(flow_run_id) if flow_run_id else None)
    sys.stdout.flush()
    click.echo(json.dumps(failure.to_dict()))


@click.group("flows")
def flows_group():
    """Serve retrofresh's Prefect deployments (refresh, compaction, evaluation, gc, rollback)."""


_config_option = click.option(
    "--config", "config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="a prefect.yaml (e.g. infra/prefect/prefect.yaml); default: the built-in deployments",
)


@flows_group.command("list")
@_config_option
def list_deployments(config):
    """Show the deployments and schedules that `flows serve` would serve."""
    from flows.deployments import DeploymentConfigError, load_deployments

    try:
        specs = load_deployments(config)
    except DeploymentConfigError as error:
        raise click.ClickException(str(error)) from error
    for spec in specs:
        when = "; ".join(
            " ".join(f"{k}={v}" for k, v in schedule.items()) for schedule in spec.schedules
        ) or "on demand"
        click.echo(f"{spec.name:18s} {spec.entrypoint:40s} {when}")


@flows_group.command("serve")
@_config_option
@click.option("--store", default=None, help="store URI passed to every flow that takes one")
@click.option("--sources", default=None, help="sources file passed to the refresh flow")
@click.option("--poll-interval", "poll_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="seconds between checks for runs to start (Prefect's default, 10 s, would delay every event-triggered refresh)")
def serve(config, store, sources, poll_s):
    """Serve every deployment with its schedules and triggers from this process (no work pool needed).

    Runs until interrupted; scheduled, event-triggered and UI-triggered runs execute here.
    """
    from prefect import serve as prefect_serve

    from flows.deployments import DeploymentConfigError, load_deployments, to_runner_deployments

    try:
        deployments = to_runner_deployments(load_deployments(config), {"store": store, "sources": sources})
    except DeploymentConfigError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"serving {len(deployments)} deployments: {', '.join(d.name for d in deployments)}", err=True)
    prefect_serve(*deployments, query_seconds=poll_s)


@flows_group.command("worker")
@click.option("--pool", "pool", required=True, help="the process work pool to take runs from (prefect work-pool create NAME --type process)")
@click.option("--work-queue", "queues", multiple=True, help="only these queues of the pool (repeatable; default: all)")
@click.option("--name", default=None, help="the worker's name in the UI (default: a random one)")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="most runs at a time (default: no limit)")
@click.option("--poll-interval", "poll_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="seconds between checks for runs to start (Prefect's default, 10 s, would delay every event-triggered refresh)")
@click.option("--no-preload", is_flag=True, help="load the flows and the encoder at the first run instead of at start")
def worker(pool, queues, name, limit, poll_s, no_preload):
    """A warm worker for a process pool: `prefect worker start --pool POOL`, but installed flows run
    in this long-lived process (no process start, imports or encoder load per run).

    Runs until interrupted. Deployments with code to pull, a command or an environment of their own
    run in a subprocess, as with `prefect worker start`.
    """
    import anyio
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    from flows.worker import WarmWorker, preload

    if not no_preload:
        click.echo("loading the flows and the encoder", err=True)
        preload()

    async def run() -> None:
        with temporary_settings({PREFECT_WORKER_QUERY_SECONDS: poll_s}):
            await WarmWorker(work_pool_name=pool, work_queues=list(queues) or None, name=name, limit=limit).start(
                printer=lambda message: click.echo(message, err=True))

    try:
        anyio.run(run)
    except KeyboardInterrupt:
        click.echo("worker stopped", err=True)
