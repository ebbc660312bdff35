"""``retrofresh flows worker``: a Prefect worker for a process work pool that keeps flows warm.

``prefect worker start --pool P`` starts a fresh Python process for every flow run, so each
event-triggered ``refresh-changed`` run pays the interpreter start, the imports of Prefect, Beam
and torch, and the encoder load: seconds, most of a targeted refresh. :class:`WarmWorker` polls
the same process pool and runs a deployment whose code is already installed (its entrypoint a
module, ``flows.refresh_changed:refresh_changed``; no pull steps, no command or environment of its
own) inside its own long-lived process, on a thread, through Prefect's flow engine. Each run stays
a flow run of its deployment, with its states, task runs, logs, artifacts and retries, and the
refresh lease inside the flow still keeps one refresh per store at a time; only the process start,
the imports and the encoder load (Beam's ``Shared`` handle in :mod:`beam_jobs.embed`) are paid
once per worker instead of once per run. Any other run goes to a subprocess exactly as the process
worker starts it.

It also starts runs as soon as they exist: besides polling the pool (every ``--poll-interval``),
it follows Prefect's ``prefect.flow-run.Scheduled`` events and polls at once when one names its
pool, so an event-triggered run does not wait for the next poll. Polling stays the fallback when
the event stream is down.

The price: a run inside the worker cannot be killed, so cancelling a running one leaves it to
finish (a refresh publishes by compare-and-swap and releases its lease either way; the process
worker of this Prefect version does not kill runs either). Runs share the worker's environment
(``RETROFRESH_STORE``, ...).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import anyio
import anyio.to_thread
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

LOG = logging.getLogger(__name__)

SCHEDULED = "prefect.flow-run.Scheduled"  # the event a new run (scheduled, triggered or manual) emits
EVENTS_RETRY_S = 10.0  # wait before reconnecting to the event stream (polling goes on meanwhile)

# What a warm worker imports and loads before its first poll, so the first run is as fast as the rest.
PRELOAD = ("flows.refresh_changed", "flows.refresh", "beam_jobs.ingest")


def warm_entrypoint(entrypoint: str | None, pull_steps: list | None, configuration: ProcessJobConfiguration) -> str | None:
    """The entrypoint to run inside the worker, or None when the run needs a process of its own.

    A run qualifies when its code is importable here (a ``module:flow`` entrypoint, nothing to
    pull), it brings no command of its own, and its environment adds nothing to the worker's
    beyond Prefect's per-run variables.
    """
    if not entrypoint or ":" not in entrypoint or pull_steps:
        return None
    module = entrypoint.split(":", 1)[0]
    if module.endswith(".py") or "/" in module or "\\" in module:
        return None
    if configuration._command_configured:
        return None
    foreign = [key for key, value in (configuration.env or {}).items() if not key.startswith("PREFECT") and os.environ.get(key) != value]
    return None if foreign else entrypoint


def run_here(flow_run_id, entrypoint: str) -> int:
    """Run one flow run in this process through Prefect's engine; 0 unless the engine itself broke.

    A flow that fails is a Failed run (the engine records it, with its retries), not a crash.
    """
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.flows import load_flow_from_entrypoint
    from prefect.logging.loggers import flow_run_logger

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    run_logger = flow_run_logger(flow_run=flow_run)
    try:
        flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        run_logger.info("running in worker process %d (warm: no process start, imports or encoder load)", os.getpid())
        run_flow(flow, flow_run=flow_run, return_type="state", error_logger=run_logger)
    except Exception:  # noqa: BLE001 - the engine broke (not the flow): the worker marks the run crashed
        run_logger.exception("the flow engine failed in the worker process")
        return 1
    return 0


def preload(modules: tuple[str, ...] = PRELOAD, *, embedder: bool = True):
    """Import the flows' modules and load the encoder into the process's shared handle; returns the encoder (or None)."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    if embedder:
        from beam_jobs.embed import shared_embedder
        from model.contracts.settings import get_settings

        return shared_embedder(precision=get_settings().precision)  # the tag the ingest and validation acquire
    return None


with warnings.catch_warnings():
    # Prefect registers worker classes by type; this one serves the same "process" pools, so in a
    # process that imports it, "process" means this class (the warning says exactly that).
    warnings.simplefilter("ignore")

    class WarmWorker(ProcessWorker):
        """A process-pool worker that runs installed flows in its own process (see the module docstring)."""

        type = "process"
        _description = "Runs installed flows inside the worker's long-lived process (no process start per run); others as subprocesses."
        _display_name = "Process (warm)"

        async def setup(self) -> None:
            await super().setup()
            # Cancelled at teardown with the worker's other background scopes, before it waits for runs.
            scope = anyio.CancelScope()
            self._scheduled_task_scopes.add(scope)
            await self._runs_task_group.start(self._start_on_events, scope)

        def _names_this_pool(self, event) -> bool:
            pools = [r for r in event.related if r.role == "work-pool"]
            return not pools or any(r.name == self._work_pool_name for r in pools)

        async def _start_on_events(self, scope: anyio.CancelScope, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
            """Poll the pool whenever a run of it is scheduled; returns (started) once subscribed."""
            from prefect.events.clients import get_events_subscriber
            from prefect.events.filters import EventFilter, EventNameFilter

            started = False
            with scope:
                while True:
                    try:
                        # The server streams live events from the moment it has the filter, then
                        # backfills the last minute: no run scheduled after this returns is missed.
                        async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=[SCHEDULED]))) as events:
                            if not started:
                                started = True
                                task_status.started()
                            async for event in events:
                                if self._names_this_pool(event):
                                    await self.get_and_submit_flow_runs()
                    except Exception as error:  # noqa: BLE001 - polling still starts every run
                        self._logger.warning("no flow-run events from the API (%s: %s); starting runs by polling only, retrying in %.0f s",
                                             type(error).__name__, error, EVENTS_RETRY_S)
                        if not started:
                            started = True
                            task_status.started()
                        await anyio.sleep(EVENTS_RETRY_S)

        async def run(self, flow_run, configuration: ProcessJobConfiguration, task_status: Any = None) -> ProcessWorkerResult:
            entrypoint = None
            if flow_run.deployment_id is not None:
                deployment = await self.client.read_deployment(flow_run.deployment_id)
                entrypoint = warm_entrypoint(deployment.entrypoint, deployment.pull_steps, configuration)
            if entrypoint is None:
                return await super().run(flow_run, configuration, task_status)
            if task_status is not None:
                task_status.started(os.getpid())
            status = await anyio.to_thread.run_sync(run_here, flow_run.id, entrypoint, abandon_on_cancel=True)
            return ProcessWorkerResult(status_code=status, identifier=str(os.getpid()))
