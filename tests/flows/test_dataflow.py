"""Following a Dataflow job: state polling against an injected source, and the job's location."""

from __future__ import annotations

import pytest

from flows.tasks._dataflow import DataflowJob, DataflowJobFailed, DataflowTimeout, job_location, wait_for_job


class ScriptedStates:
    """A job state source that replays a script of states, then repeats the last one."""

    def __init__(self, *states: str):
        self.states = list(states)
        self.calls = 0

    def state(self, job: DataflowJob) -> str:
        self.calls += 1
        return self.states[min(self.calls, len(self.states)) - 1]


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


JOB = DataflowJob("2026-01-01_00_00_00-123", "proj", "europe-west1")


def test_polls_until_done_and_reports_each_state_change_once():
    source = ScriptedStates("JOB_STATE_PENDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_RUNNING", "JOB_STATE_DONE")
    clock, seen = FakeClock(), []
    report = wait_for_job(JOB, source, poll_interval_s=10, on_poll=seen.append, sleep=clock.sleep, clock=clock)
    assert report.states == ["JOB_STATE_PENDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_DONE"]
    assert seen == source.states  # every poll is reported (the flow renews its lease there)
    assert clock.sleeps == [10, 10, 10, 10]


@pytest.mark.parametrize("final", ["JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"])
def test_a_job_that_ends_badly_raises_with_its_console_link(final):
    clock = FakeClock()
    with pytest.raises(DataflowJobFailed) as info:
        wait_for_job(JOB, ScriptedStates("JOB_STATE_RUNNING", final), sleep=clock.sleep, clock=clock)
    assert info.value.state == final
    assert JOB.job_id in str(info.value)
    assert "console.cloud.google.com/dataflow/jobs/europe-west1/" in str(info.value)


def test_a_job_that_never_finishes_times_out_and_says_it_keeps_running():
    clock = FakeClock()
    with pytest.raises(DataflowTimeout, match="keeps running"):
        wait_for_job(JOB, ScriptedStates("JOB_STATE_RUNNING"), poll_interval_s=60, timeout_s=300, sleep=clock.sleep, clock=clock)
    assert clock.now == 300


def test_console_url():
    assert JOB.console_url == (
        "https://console.cloud.google.com/dataflow/jobs/europe-west1/2026-01-01_00_00_00-123?project=proj"
    )


@pytest.mark.parametrize(
    "args",
    [["--project=p", "--region=r"], ["--project", "p", "--region", "r"], ["--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/t", "--region", "r"]],
)
def test_job_location_from_pipeline_args(args):
    assert job_location(args, "j") == DataflowJob("j", "p", "r")


@pytest.mark.parametrize("args, missing", [([], "--project and --region"), (["--project=p"], "--region"), (["--region", "r"], "--project")])
def test_job_location_names_what_is_missing(args, missing):
    with pytest.raises(ValueError, match=missing):
        job_location(args, "j")


def test_committed_counters_sum_steps_and_skip_tentative_and_other_namespaces():
    from flows.tasks._dataflow import committed_counters

    def metric(name, scalar, *, step="s1", namespace="retrofresh", origin="user", tentative=False):
        context = {"step": step, "namespace": namespace, **({"tentative": "true"} if tentative else {})}
        return {"name": {"origin": origin, "name": name, "context": context}, "scalar": scalar}

    response = {"metrics": [
        metric("new", 3), metric("new", 2, step="s2"), metric("new", 99, tentative=True),
        metric("chunks", "40"), metric("new", 7, namespace="other"), metric("ElementCount", 5, origin="dataflow/v1b3"),
    ]}
    assert committed_counters(response, "retrofresh") == {"new": 5, "chunks": 40}
    assert committed_counters({}, "retrofresh") == {}
