"""CLI: ``site generate`` writes a static edition with its facts; ``ingest`` reports bad input clearly."""

from __future__ import annotations

import json

from click.testing import CliRunner

from flows.cli import cli


def test_site_generate_writes_the_edition_and_its_facts(tmp_path):
    result = CliRunner().invoke(cli, ["site", "generate", "--edition", "1", "--out", str(tmp_path), "--base-url", "http://h:1"])
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "facts.json").read_text())
    assert facts["edition"] == 1 and facts["changes"] and facts["facts"]
    change = facts["changes"][0]
    assert all(u.startswith("http://h:1/") for u in change["urls"])
    assert (tmp_path / "index.html").exists() and (tmp_path / "robots.txt").exists()
    assert "http://h:1/" in (tmp_path / "sitemap.xml").read_text()
    profile = next(u for u in change["urls"] if u.endswith(".html") and "/news/" not in u)
    assert change["sentence"] in (tmp_path / profile.removeprefix("http://h:1/")).read_text()


def test_ingest_names_the_bad_field_and_line(tmp_path):
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - kind: site\n    name: s\n    start_urls: []\n")
    result = CliRunner().invoke(cli, ["ingest", "--sources", str(sources), "--store", str(tmp_path / "store")])
    assert result.exit_code == 1
    assert "sources.yaml:4: sources[0].start_urls" in result.output


def test_ingest_needs_a_store(tmp_path, monkeypatch):
    monkeypatch.delenv("RETROFRESH_STORE", raising=False)
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - kind: feed\n    name: f\n    url: http://127.0.0.1:9/feed.xml\n")
    result = CliRunner().invoke(cli, ["ingest", "--sources", str(sources)])
    assert result.exit_code == 2 and "no store" in result.output


def test_ingest_on_dask_without_a_scheduler_says_how_to_name_one(tmp_path):
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  - kind: feed\n    name: f\n    url: http://127.0.0.1:9/feed.xml\n")
    result = CliRunner().invoke(cli, ["ingest", "--sources", str(sources), "--store", str(tmp_path / "store"), "--runner", "dask"])
    assert result.exit_code == 1
    assert "--dask_client_address=tcp://HOST:PORT" in result.output and "dask scheduler" in result.output
    assert not (tmp_path / "store" / "CURRENT").exists()
