"""`retrofresh serve` as a real process, asked by `retrofresh query`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.cli import cli
from model.client import RetroClient
from tests.fixtures.server import LabelledStore, free_port, label_of, start_serve_process

pytestmark = pytest.mark.integration


@pytest.fixture
def served(labelled_store: LabelledStore, tiny_checkpoint: Path, tmp_path):
    version = labelled_store.publish("A")
    server = start_serve_process(tiny_checkpoint, labelled_store.uri, tmp_path, env={"RETROFRESH_ADMIN_TOKEN": "cli-token"})
    try:
        server.wait_ready()
        yield server.url, version
    finally:
        server.stop()


def test_query_retrieves_and_generates_through_a_served_checkpoint(served):
    url, version = served
    runner = CliRunner()
    out = runner.invoke(cli, ["query", "who is the mayor of the river town?", "--url", url, "--retrieve-only", "--json", "-k", "2"])
    assert out.exit_code == 0, out.output
    answer = json.loads(out.output)
    assert answer["index_version"] == version and len(answer["results"][0]) == 2
    assert {label_of(n["url"]) for n in answer["results"][0]} == {"A"}

    text = runner.invoke(cli, ["query", "who is the mayor?", "--url", url, "--retrieve-only"])
    assert text.exit_code == 0 and f"index version {version}" in text.output and "v-a.example.test" in text.output

    gen = runner.invoke(cli, ["query", "The mayor of the river town " * 20, "--url", url, "--max-new-tokens", "4", "--seed", "3", "--json"])
    assert gen.exit_code == 0, gen.output
    body = json.loads(gen.output)
    assert body["index_version"] == version and body["retrieval"] and body["neighbours"]

    bad = runner.invoke(cli, ["query", "x", "--url", url, "--retrieve-only", "-k", "99"])
    assert bad.exit_code == 1 and "max_k=16" in bad.output
    # The admin token comes from the environment the server was started with.
    assert RetroClient(url, admin_token="cli-token").reload().version == version


def test_query_says_when_no_server_answers():
    out = CliRunner().invoke(cli, ["query", "x", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2"])
    assert out.exit_code == 1 and "failed after 3 attempts" in out.output


def test_serve_without_a_store_is_a_usage_error(tiny_checkpoint, monkeypatch):
    monkeypatch.delenv("RETROFRESH_STORE", raising=False)
    out = CliRunner().invoke(cli, ["serve", "--checkpoint", str(tiny_checkpoint)])
    assert out.exit_code == 2 and "missing --store" in out.output
