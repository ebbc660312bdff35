"""A server over a store with nothing published yet: ready, retrieval off, and it says so."""

from __future__ import annotations

import httpx
import pytest

from model.client import RetroClient
from tests.fixtures.server import LabelledStore, label_of
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration


def test_retrieval_is_off_until_a_version_is_published(labelled_store: LabelledStore, server_settings, run_server):
    server = run_server(server_settings(labelled_store.uri, reload_interval_s=0.2))
    client = RetroClient(server.url)
    ready = client.wait_ready(timeout=60)
    assert (ready.ready, ready.retrieval, ready.index_version) == (True, False, None)
    assert "no published version" in ready.reason

    info = client.index()
    assert (info.version, info.retrieval, info.last_error) == (None, False, None)
    refused = httpx.post(f"{server.url}/v1/retrieve", json={"text": "anything"})
    assert refused.status_code == 503 and "retrieval is off" in refused.json()["detail"]
    answer = client.generate("The mayor of the river town " * 20, max_new_tokens=3)
    assert (answer.retrieval, answer.index_version, answer.neighbours) == (False, None, [])
    assert "retrieval is off" in answer.note
    scored = client.score("The mayor of the river town said hello.")
    assert not scored.retrieval and "retrieval is off" in scored.note
    assert "retrofresh_index_loaded 0.0" in client.metrics()

    version = labelled_store.publish("A")
    wait_for(lambda: client.ready().retrieval, timeout=30, what="the first version to load")
    hits = client.retrieve("the mayor", k=1)
    assert hits.index_version == version and label_of(hits.results[0][0].url) == "A"


def test_a_store_whose_current_version_is_damaged_is_not_ready(labelled_store: LabelledStore, server_settings, run_server):
    version = labelled_store.publish("A")
    labelled_store.damage(version, "chunks.arrow")
    server = run_server(server_settings(labelled_store.uri, reload_interval_s=0.2))
    client = RetroClient(server.url)
    wait_for(lambda: client.index().last_error is not None, timeout=30, what="the first check")
    ready = client.ready()
    assert not ready.ready and "checksum" in ready.reason
    assert httpx.get(f"{server.url}/readyz").status_code == 503
    assert client.healthz()  # alive, just not ready: an orchestrator keeps it out of rotation


def test_the_admin_api_is_off_without_a_token(labelled_store: LabelledStore, server_settings, run_server):
    server = run_server(server_settings(labelled_store.uri, admin_token=None))
    answer = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 403 and "RETROFRESH_ADMIN_TOKEN" in answer.json()["detail"]


def test_a_directory_that_is_no_checkpoint_stops_start_up_with_the_reason(labelled_store, server_settings, tmp_path, caplog):
    from tests.fixtures.server import start_server

    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="exited during start-up"):
        start_server(server_settings(labelled_store.uri, checkpoint=empty), timeout=60)
    assert "is not a retrofresh checkpoint" in caplog.text
