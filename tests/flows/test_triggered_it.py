"""The event path end to end against the Prefect test API: `retrofresh notify` -> the
retrofresh.source.changed event -> the refresh-changed deployment's trigger -> a run served by
`retrofresh flows serve` -> the named page published."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.fixtures.waiting import stop_process_group, wait_for
from tests.flows.test_deployments_it import ROOT, env_for, read_deployments

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_a_change_event_triggers_the_served_targeted_refresh(prefect_api, refreshed, tmp_path):
    """`retrofresh notify URL` -> retrofresh.source.changed -> the deployment trigger -> a
    `refresh-changed` run in `retrofresh flows serve` -> the named page published; a stranger URL
    in the same event never fetched."""
    from flows.deployments import DEFAULT_DEPLOYMENTS
    from flows.common.events import emit_changes
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
        serve_log = (tmp_path / "serve.log").read_text
        wait_for(lambda: "refresh-changed/served-changed" in read_deployments(["refresh-changed"]), timeout=180, interval=0.5,
                 what="serve to register the deployment", alive=process, log=serve_log)
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
        wait_for(lambda: open_store(store).current() != before, timeout=240, interval=0.5,
                 what="the triggered run to publish", alive=process, log=lambda: serve_log()[-4000:])
        ledger = {row["url"]: row for row in open_store(store).read_ledger(open_store(store).current()).to_pylist()}
        assert ledger[page]["content_hash"] != {r["url"]: r for r in open_store(store).read_ledger(before).to_pylist()}[page]["content_hash"]
        assert {r.path for r in site.requests} <= {"/", "/robots.txt"}
    finally:
        stop_process_group(process)
        log.close()
        site.set_edition(1)
