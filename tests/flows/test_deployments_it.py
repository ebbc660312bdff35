"""Deployments against the Prefect test API: ``prefect deploy`` of prefect.yaml, and ``retrofresh flows serve``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.waiting import stop_process_group, wait_for

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
        def registered():
            found = read_deployments(["gc-store", "rollback-index"])
            return found if len(found) >= 2 and "gc-store/served-gc" in found else None

        found = wait_for(registered, timeout=180, interval=0.5, what="serve to register its deployments", alive=process,
                         log=(tmp_path / "serve.log").read_text)
        gc = found["gc-store/served-gc"]
        assert [s.schedule.cron for s in gc.schedules] == ["0 4 * * *"]
        assert gc.parameters == {"keep": 3, "min_age_s": 0, "store": str(store)}

        run = run_deployment("gc-store/served-gc", timeout=240)
        assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text())
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).deployment_id == gc.id
    finally:
        stop_process_group(process)
        log.close()

