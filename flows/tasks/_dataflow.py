"""Follow a submitted Dataflow job until it finishes: its state, its console link, its failure.

Dataflow cannot run on a developer machine, so the state source is injectable: the default asks
the Dataflow REST API (``projects.locations.jobs.get``) through google-auth; tests pass a fake
source or point the REST source at a local HTTP server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

LOG = logging.getLogger(__name__)

DATAFLOW_API = "https://dataflow.googleapis.com"
SUCCEEDED = frozenset({"JOB_STATE_DONE"})
# A job in one of these states will never run again; UPDATED means it was replaced by a new job.
FAILED = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"})
TERMINAL = SUCCEEDED | FAILED


class DataflowJobFailed(RuntimeError):
    """The Dataflow job ended in a state other than JOB_STATE_DONE."""

    def __init__(self, job: "DataflowJob", state: str):
        super().__init__(f"Dataflow job {job.job_id} ended {state}; see {job.console_url}")
        self.job = job
        self.state = state


class DataflowTimeout(TimeoutError):
    """The job did not finish within the allowed time (it is left running)."""


@dataclass(frozen=True)
class DataflowJob:
    """Where a Dataflow job lives."""

    job_id: str
    project: str
    region: str

    @property
    def console_url(self) -> str:
        return f"https://console.cloud.google.com/dataflow/jobs/{self.region}/{self.job_id}?project={self.project}"


class JobStateSource(Protocol):
    """Anything that reports a Dataflow job's state (``JOB_STATE_*``) and its user counters."""

    def state(self, job: DataflowJob) -> str: ...

    def counters(self, job: DataflowJob, namespace: str) -> dict[str, int]: ...


def committed_counters(response: dict, namespace: str) -> dict[str, int]:
    """User counters of one namespace from a ``jobs.getMetrics`` answer, summed over steps.

    Dataflow reports each counter twice per step, committed and tentative (``context.tentative``);
    like Beam's DataflowMetrics, the committed value is the one that counts.
    """
    totals: dict[str, int] = {}
    for metric in response.get("metrics", []):
        name = metric.get("name", {})
        context = name.get("context", {})
        if name.get("origin") != "user" or context.get("namespace") != namespace or context.get("tentative") == "true":
            continue
        scalar = metric.get("scalar")
        if scalar is None:
            continue
        totals[name["name"]] = totals.get(name["name"], 0) + int(float(scalar))
    return totals


@dataclass
class RestJobStateSource:
    """Reads job state from the Dataflow REST API with application-default credentials.

    Args:
        endpoint: API root; tests point it at a local server.
        session: an authorised ``requests`` session; None builds one from ``google.auth.default``.
        timeout_s: seconds per HTTP request.
    """

    endpoint: str = DATAFLOW_API
    session: object | None = None
    timeout_s: float = 30.0

    def _session(self):
        if self.session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            self.session = AuthorizedSession(credentials)
        return self.session

    def _get(self, job: DataflowJob, suffix: str = "", **params) -> dict:
        url = f"{self.endpoint.rstrip('/')}/v1b3/projects/{job.project}/locations/{job.region}/jobs/{job.job_id}{suffix}"
        response = self._session().get(url, params=params, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def state(self, job: DataflowJob) -> str:
        return self._get(job, view="JOB_VIEW_SUMMARY").get("currentState", "JOB_STATE_UNKNOWN")

    def counters(self, job: DataflowJob, namespace: str) -> dict[str, int]:
        return committed_counters(self._get(job, "/metrics"), namespace)


@dataclass
class PollReport:
    """The states seen while polling, in order (first sighting of each change)."""

    states: list[str] = field(default_factory=list)

    def see(self, state: str) -> bool:
        changed = not self.states or self.states[-1] != state
        if changed:
            self.states.append(state)
        return changed


def wait_for_job(
    job: DataflowJob,
    source: JobStateSource,
    *,
    poll_interval_s: float = 30.0,
    timeout_s: float = 6 * 3600.0,
    on_poll: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PollReport:
    """Poll a job's state until it is terminal.

    Args:
        job: the job to follow.
        source: where states come from.
        poll_interval_s: seconds between polls.
        timeout_s: give up after this long (the job keeps running; the error says so).
        on_poll: called with every state read (the refresh flow renews its lease here).
        sleep, clock: injectable for tests.

    Returns:
        The states seen, ending in JOB_STATE_DONE.

    Raises:
        DataflowJobFailed: the job ended failed, cancelled, drained or replaced.
        DataflowTimeout: the job was still running after ``timeout_s``.
    """
    report = PollReport()
    deadline = clock() + timeout_s
    while True:
        state = source.state(job)
        if report.see(state):
            LOG.info("Dataflow job %s: %s (%s)", job.job_id, state, job.console_url)
        if on_poll is not None:
            on_poll(state)
        if state in SUCCEEDED:
            return report
        if state in FAILED:
            raise DataflowJobFailed(job, state)
        if clock() >= deadline:
            raise DataflowTimeout(
                f"Dataflow job {job.job_id} still {state} after {timeout_s:.0f} s; it keeps running: {job.console_url}"
            )
        sleep(poll_interval_s)


def job_location(pipeline_args: list[str] | None, job_id: str) -> DataflowJob:
    """Project and region of a job from the pipeline arguments it was submitted with.

    Raises:
        ValueError: ``--project`` or ``--region`` is missing (Dataflow needs both).
    """
    values: dict[str, str] = {}
    args = list(pipeline_args or [])
    for i, arg in enumerate(args):
        for name in ("project", "region"):
            flag = f"--{name}"
            if arg.startswith(flag + "="):
                values[name] = arg.split("=", 1)[1]
            elif arg == flag and i + 1 < len(args):
                values[name] = args[i + 1]
    missing = [name for name in ("project", "region") if not values.get(name)]
    if missing:
        raise ValueError(f"runner='dataflow' needs {' and '.join('--' + m for m in missing)} in pipeline_args")
    return DataflowJob(job_id, values["project"], values["region"])
