"""Deployments against the Prefect test API: ``prefect deploy`` of prefect.yaml, and ``retrofresh flows serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "infra" / "prefect" / "prefect.yaml"


def env_for(api_url: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}


def read_deployments(flow_names: list[str] | None = None) -> dict[str, object]:
    """Deployments in the API, by "flow-name/deployment-name"."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}": d for d in client.read_deployments() if not flow_names or flows[d.flow_id] in flow_names}


def test_prefect_deploy_registers_every_deployment_with_its_schedule(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="retrofresh", type="process"), overwrite=True)
    prefect = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--prefect-file", str(PREFECT_YAML), "--all"],
        cwd=ROOT, env=env_for(prefect_api), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    specs = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    flow_names = sorted({spec["entrypoint"].split(":")[1].replace("_", "-") for spec in specs})  # flow names are the functions'
    deployments = read_deployments(flow_names)
    assert {"refresh-corpus", "compact-index", "evaluate-freshness", "evaluate-temporal", "gc-store", "rollback-index", "refresh-changed"} <= set(flow_names)
    assert len(deployments) == len(specs) >= 7
    for spec in specs:
        key = f"{spec['entrypoint'].split(':')[1].replace('_', '-')}/{spec['name']}"  # flow names are the functions'
        deployment = deployments[key]
        assert deployment.work_pool_name == "retrofresh"
        assert deployment.entrypoint == spec["entrypoint"]
        assert [s.schedule.cron for s in deployment.schedules] == [s["cron"] for s in spec["schedules"]]
        assert all(s.active for s in deployment.schedules)
        assert deployment.parameters == spec["parameters"]


def test_flows_serve_registers_schedules_and_runs_what_is_triggered(prefect_api, tmp_path):
    """`retrofresh flows serve --config` in its own process: schedules registered, a triggered run executed."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    config = {"deployments": [
        {"name": "served-gc", "entrypoint": "flows.gc:gc_store", "parameters": {"keep": 3, "min_age_s": 0},
         "schedules": [{"cron": "0 4 * * *", "timezone": "UTC"}]},
        {"name": "served-rollback", "entrypoint": "flows.rollback:rollback_index", "schedules": []},
    ]}
    config_file = tmp_path / "served.yaml"
    config_file.write_text(yaml.safe_dump(config))
    store = tmp_path / "store"
    retrofresh = Path(sys.executable).with_name("retrofresh")
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([str(retrofresh), "flows", "serve", "--config", str(config_file), "--store", str(store)],
                               cwd=tmp_path, env=env_for(prefect_api), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(found := read_deployments(["gc-store", "rollback-index"])) < 2 or "gc-store/served-gc" not in found:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not register its deployments"
            time.sleep(0.5)
        gc = found["gc-store/served-gc"]
        assert [s.schedule.cron for s in gc.schedules] == ["0 4 * * *"]
        assert gc.parameters == {"keep": 3, "min_age_s": 0, "store": str(store)}

        run = run_deployment("gc-store/served-gc", timeout=240)
        assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text())
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).deployment_id == gc.id
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.mark.slow
def test_a_change_event_triggers_the_served_targeted_refresh(prefect_api, refreshed, tmp_path):
    """`retrofresh notify URL` -> retrofresh.source.changed -> the deployment trigger -> a
    `refresh-changed` run in `retrofresh flows serve` -> the named page published; a stranger URL
    in the same event never fetched."""
    from flows.deployments import DEFAULT_DEPLOYMENTS
    from flows.events import emit_changes
    from model.store import open_store
    from tests.flows.support import copy_store

    store = copy_store(refreshed.store, tmp_path / "store")
    before = open_store(store).current()
    spec = next(s for s in DEFAULT_DEPLOYMENTS if s.name == "refresh-changed")
    config_file = tmp_path / "changed.yaml"
    config_file.write_text(yaml.safe_dump({"deployments": [
        {"name": "served-changed", "entrypoint": spec.entrypoint, "schedules": [], "triggers": list(spec.triggers)}]}))
    env = {**env_for(prefect_api), "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "flows", "serve", "--config", str(config_file), "--store", store,
                                "--sources", str(refreshed.sources), "--poll-interval", "0.5"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    site = refreshed.site
    try:
        deadline = time.monotonic() + 180
        while "refresh-changed/served-changed" not in read_deployments(["refresh-changed"]):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not register the deployment"
            time.sleep(0.5)
        site.set_edition(2)
        site.clear_log()
        page = site.base_url + "/"
        notified = subprocess.run([sys.executable, "-m", "flows.cli", "notify", page, "--sources", str(refreshed.sources), "--store", store],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert notified.returncode == 0, notified.stdout + notified.stderr
        assert "announced 1 URLs in 1 events" in notified.stdout
        refused = subprocess.run([sys.executable, "-m", "flows.cli", "notify", "http://169.254.169.254/", "--sources", str(refreshed.sources)],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "refused http://169.254.169.254/" in refused.stderr
        emit_changes([page, "http://10.1.2.3/internal"], source="sample", origin="test")  # a forged event: the stranger is refused in the run
        deadline = time.monotonic() + 240
        while open_store(store).current() == before:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
            time.sleep(0.5)
        ledger = {row["url"]: row for row in open_store(store).read_ledger(open_store(store).current()).to_pylist()}
        assert ledger[page]["content_hash"] != {r["url"]: r for r in open_store(store).read_ledger(before).to_pylist()}[page]["content_hash"]
        assert {r.path for r in site.requests} <= {"/", "/robots.txt"}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        site.set_edition(1)
