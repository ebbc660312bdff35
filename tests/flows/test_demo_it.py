"""`retrofresh demo` end to end (what `make demo` runs), at its smallest: a guard against rot."""

import json

import pytest
from click.testing import CliRunner

from flows.demo import demo


@pytest.mark.integration
@pytest.mark.slow
def test_demo_publishes_two_versions_and_the_server_picks_up_the_changed_facts(prefect_api, tmp_path, monkeypatch):
    # The demo sets these for itself and the processes it starts; monkeypatch restores them.
    monkeypatch.setenv("RETROFRESH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RETROFRESH_ADMIN_TOKEN", raising=False)
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(demo, ["--workdir", str(workdir), "--size", "1", "--train-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    report = json.loads((workdir / "demo.json").read_text())
    first, second = report["first_refresh"], report["second_refresh"]
    assert first["published"] and second["published"]
    assert second["parent"] == first["version"]
    # The server answered from the version each refresh published, with the same weights.
    assert {row["index_version"] for row in report["before"]} == {first["version"]}
    assert {row["index_version"] for row in report["after"]} == {second["version"]}
    # Before the refresh no neighbour states a new value; after it, every changed fact's does.
    assert not any(row["retrieved_new"] for row in report["before"])
    assert report["picked_up"] == report["facts_changed"] > 0
