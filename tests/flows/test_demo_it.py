"""`retrofresh demo --check` end to end (what `make demo` runs, and what CI asserts)."""

import json

import pytest
from click.testing import CliRunner

from flows.demo import demo


@pytest.mark.integration
@pytest.mark.slow
def test_the_served_model_follows_its_index_with_the_same_weights(prefect_api, tmp_path, monkeypatch):
    # The demo sets these for itself and the processes it starts; monkeypatch restores them.
    monkeypatch.setenv("RETROFRESH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RETROFRESH_ADMIN_TOKEN", raising=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(demo, ["--workdir", str(tmp_path / "demo"), "--out", str(out), "--check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    report = json.loads((out / "demo.json").read_text())
    first, second = report["first_refresh"], report["second_refresh"]
    assert first["published"] and second["published"] and second["parent"] == first["version"]
    # Every answer came from the version each refresh published, with the same weights.
    assert {row["index_version"] for row in report["before"]} == {first["version"]}
    assert {row["index_version"] for row in report["after"]} == {second["version"]}
    n = report["facts_changed"]
    assert n > 0 and report["passed"], report["failures"]
    assert report["prefer_old_before"] >= 0.8 * n and report["prefer_new_after"] >= 0.8 * n
    assert report["generated_new_after"] >= 2 * n / 3 and report["generated_new_before"] == 0
    # The same check fails for the same weights with retrieval off: the flips come from the index.
    assert report["control_failures"]
    assert {row["retrieval"] for row in report["control"]} == {False}
    assert report["freshness_lag_s"] > 0
    assert (out / "facts.png").read_bytes().startswith(b"\x89PNG")
    assert "Result: **passed**" in (out / "report.md").read_text()
