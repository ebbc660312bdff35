"""Change events reach the Prefect API, or whoever sent them hears that they did not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.common.events import SOURCE_CHANGED, ChangesNotDelivered, deliver_changes
from tests.flows.support import dead_url, write_sources
from tests.flows.test_deployments_it import ROOT, env_for

pytestmark = pytest.mark.integration

SITE = "http://127.0.0.1:8000"


def test_delivered_events_are_in_the_api(prefect_api):
    import httpx

    from tests.fixtures.waiting import wait_for

    urls = [f"{SITE}/delivered-{i}" for i in range(3)]
    events = deliver_changes(urls, source="sample", origin="test", store="/tmp/store")
    assert [e.payload["urls"] for e in events] == [urls]

    def stored() -> list:
        body = {"filter": {"event": {"name": [SOURCE_CHANGED]}, "any_resource": {"id": ["retrofresh.source.sample"]}}, "limit": 50}
        answer = httpx.post(f"{prefect_api}/events/filter", json=body, timeout=10)
        answer.raise_for_status()
        return [e for e in answer.json()["events"] if e["id"] == str(events[0].id)]

    wait_for(stored, timeout=30, interval=0.2, what="the event in the API")
    assert stored()[0]["payload"]["urls"] == urls


def test_undelivered_events_raise_and_name_the_urls(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    down = dead_url() + "/api"
    with temporary_settings({PREFECT_API_URL: down}):
        with pytest.raises(ChangesNotDelivered) as info:
            deliver_changes([f"{SITE}/a", f"{SITE}/b", f"{SITE}/a"], source="sample", origin="test", attempts=1)
    assert info.value.urls == [f"{SITE}/a", f"{SITE}/b"] and info.value.delivered == []
    assert f"the Prefect API at {down} did not take 1 of 1 {SOURCE_CHANGED} events" in str(info.value)


def test_notify_with_the_prefect_api_down_exits_non_zero_and_says_what_was_not_announced(tmp_path):
    sources = write_sources(tmp_path / "sources.yaml", SITE)
    down = dead_url() + "/api"
    out = subprocess.run([sys.executable, "-m", "flows.cli", "notify", f"{SITE}/a", f"{SITE}/b", "--sources", str(sources)],
                         cwd=ROOT, env=env_for(down), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "announced" not in out.stdout
    assert f"Error: the Prefect API at {down} did not take" in out.stderr
    assert f"Not announced: {SITE}/a {SITE}/b" in out.stderr and "PREFECT_API_URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_notify_refuses_an_unparseable_url_without_a_traceback(tmp_path):
    sources = write_sources(tmp_path / "sources.yaml", SITE)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "notify", "http://[::1", "--sources", str(sources)],
                         cwd=ROOT, env=env_for(dead_url() + "/api"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "refused http://[::1: not a well-formed http(s) URL" in out.stderr and "no URL belongs to a configured source" in out.stderr
    assert "Traceback" not in out.stderr
