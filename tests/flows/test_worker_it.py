"""The deployments on a Prefect work pool, for real: ``prefect deploy --prefect-file
infra/prefect/prefect.yaml --all``, a worker on a process pool (``prefect worker start``, or the
warm ``retrofresh flows worker``), and a retrofresh.source.changed event -> the refresh-changed
trigger -> a run the worker executes -> the named page published.

The test deploys a copy of prefect.yaml that differs in three places only: the work pool (one of
the test's own, so its worker takes no other test's runs), every schedule inactive (the ``*/15``
refresh would otherwise be due during the test and publish a version of its own), and each
deployment's name suffixed with the pool's (other tests deploy the same names: runs of theirs that
a trigger left waiting would be absorbed by this test's run).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.fixtures.waiting import stop_process_group, wait_for
from tests.flows.test_deployments_it import PREFECT_YAML, ROOT, env_for, read_deployments

pytestmark = pytest.mark.integration


def deploy_copy(directory: Path, pool: str) -> Path:
    """prefect.yaml with every deployment on ``pool``, named ``NAME-POOL``, and every schedule inactive."""
    config = yaml.safe_load(PREFECT_YAML.read_text())
    for spec in config["deployments"]:
        spec["name"] = f"{spec['name']}-{pool}"
        spec["work_pool"] = {**spec["work_pool"], "name": pool}
        spec["schedules"] = [{**schedule, "active": False} for schedule in spec["schedules"]]
    path = directory / "prefect.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def deploy(prefect_api: str, config: Path, pool: str) -> dict[str, object]:
    """Create the process pool, ``prefect deploy --all`` the file; the deployments, by flow/name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run([str(prefect), "--no-prompt", "deploy", "--prefect-file", str(config), "--all"],
                          cwd=ROOT, env=env_for(prefect_api), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {key: d for key, d in read_deployments().items() if d.work_pool_name == pool}


def runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def logs_of(run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return [entry.message for entry in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))]


WORKERS = {
    # Prefect's own: a new process per run.
    "prefect-worker": lambda pool: [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", pool, "--name", f"{pool}-worker"],
    # retrofresh's warm worker: installed flows run inside it. It polls only at start (then every
    # WARM_POLL_S): later runs start only because it follows the flow-run events.
    "warm-worker": lambda pool: [sys.executable, "-m", "flows.cli", "flows", "worker", "--pool", pool, "--name", f"{pool}-worker",
                                 "--poll-interval", str(WARM_POLL_S)],
}
WARM_POLL_S = 600


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the session's Prefect API and store, then up to 0.7 * WARM_POLL_S of waiting, on a shared machine
@pytest.mark.parametrize("kind", sorted(WORKERS))
def test_a_change_event_runs_the_deployed_targeted_refresh_on_a_process_worker(prefect_api, refreshed, tmp_path, kind):
    """prefect.yaml deployed to a process pool; the worker executes the run a change event
    triggers, which publishes the changed page; no other run starts. The warm worker runs it in
    its own process, with the run's logs and artifacts as in a process of its own, and starts a
    second change's run on the flow-run event, long before its next poll."""
    from flows.common.events import deliver_changes
    from model.store import open_store
    from tests.flows.support import artifacts_of, copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    before = open_store(store).current()
    pool = f"worker-it-{uuid.uuid4().hex[:8]}"
    deployments = deploy(prefect_api, deploy_copy(tmp_path, pool), pool)
    specs = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    assert len(deployments) == len(specs)
    assert all(not s.active for d in deployments.values() for s in d.schedules)
    changed = deployments[f"refresh-changed/refresh-changed-{pool}"]

    # The worker reads the store and sources from its environment (prefect.yaml stores neither).
    env = env_for(prefect_api) | {"RETROFRESH_STORE": store, "RETROFRESH_SOURCES": str(refreshed.sources),
                                  "PREFECT_WORKER_QUERY_SECONDS": "1"}
    env.pop("RETROFRESH_SERVERS", None)
    log_path = tmp_path / "worker.log"
    log = open(log_path, "w")
    env["PYTHONPATH"] = str(ROOT)  # `python -m flows.cli` from tmp_path
    started = time.monotonic()  # the worker's first poll comes after this; its next >= 0.7 * WARM_POLL_S after that
    worker = subprocess.Popen(WORKERS[kind](pool), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    site = refreshed.site
    try:
        site.set_edition(2)
        site.clear_log()
        page = site.base_url + "/"
        # Runs wait in the pool until the worker polls, so the event need not wait for the worker.
        deliver_changes([page], source="sample", origin="test", store=store)
        run = wait_for(lambda: next((r for r in runs_of(changed.id) if r.state and r.state.is_final()), None), timeout=300,
                       interval=0.5, what="the worker to finish the triggered run", alive=worker, log=lambda: log_path.read_text()[-4000:])
        assert run.state.is_completed(), (run.state, log_path.read_text()[-4000:])
        assert run.work_pool_name == pool and run.infrastructure_pid, run
        ran_inside = run.infrastructure_pid.rsplit(":", 1)[-1] == str(worker.pid)
        assert ran_inside == (kind == "warm-worker"), (run.infrastructure_pid, worker.pid)
        assert "refresh-summary" in artifacts_of(run.id)
        # The run's logs reach the API through a background sender, after the run may have ended.
        wait_for(lambda: any(m.startswith("published ") for m in logs_of(run.id)), timeout=60, interval=0.5,
                 what="the run's log line 'published ...' in the API", log=lambda: "\n".join(logs_of(run.id)))
        assert run.parameters["urls"] == [page]
        after = open_store(store).current()
        assert after != before
        hashes = lambda version: {r["url"]: r["content_hash"] for r in open_store(store).read_ledger(version).to_pylist()}  # noqa: E731
        assert hashes(after)[page] != hashes(before)[page]
        assert {r.path for r in site.requests} <= {"/", "/robots.txt"}  # a targeted refresh, not a crawl
        others = [r for d in deployments.values() if d.id != changed.id for r in runs_of(d.id)]
        assert others == [], [(r.name, r.state_name) for r in others]
        if kind == "warm-worker":
            # The worker polled at start; its next poll is >= 0.7 * WARM_POLL_S later (Prefect's
            # jitter clamps the interval to ~0.75-1.3 of it). Before then, only the run's Scheduled
            # event can start this one.
            site.set_edition(3)
            deliver_changes([page], source="sample", origin="test", store=store)
            second = wait_for(lambda: next((r for r in runs_of(changed.id) if r.id != run.id and r.state and r.state.is_final()), None),
                              timeout=0.7 * WARM_POLL_S - (time.monotonic() - started), interval=0.5,
                              what="the warm worker to start a run on its Scheduled event", alive=worker, log=lambda: log_path.read_text()[-4000:])
            assert second.state.is_completed() and second.infrastructure_pid == run.infrastructure_pid, second
            assert open_store(store).current() != after
    finally:
        stop_process_group(worker)
        log.close()
        site.set_edition(1)
