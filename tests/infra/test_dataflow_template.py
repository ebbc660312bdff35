"""infra/dataflow: the flex template's parameters are the ingest job's options, and its launcher builds the job."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re

import pytest

from beam_jobs.ingest import main as ingest_main
from beam_jobs.options import IngestOptions
from tests.infra.facts import INFRA

METADATA = INFRA / "dataflow" / "metadata.json"


def ingest_options() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    IngestOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def parameters() -> dict[str, dict]:
    return {p["name"]: p for p in json.loads(METADATA.read_text())["parameters"]}


def test_the_templates_parameters_are_the_ingest_jobs_options():
    options, params = ingest_options(), parameters()
    assert set(params) == set(options)
    for name, param in params.items():
        assert param["helpText"].startswith(options[name].help), name
        for regex in param.get("regexes", []):
            re.compile(regex)


def test_required_parameters_are_the_ones_the_job_refuses_to_run_without(capsys):
    required = {name for name, p in parameters().items() if not p["isOptional"]}
    assert required == {"sources", "store"}
    assert ingest_main([]) == 2 and ingest_main(["--sources", "s.yaml"]) == 2 and ingest_main(["--store", "gs://b/i"]) == 2
    assert "usage" in capsys.readouterr().err


def test_parameter_values_the_template_accepts_match_its_regexes():
    params = parameters()
    accepts = {
        "sources": ["gs://bucket/config/sources.yaml", "/opt/retrofresh/sources.yml"],
        "store": ["gs://my-project-retrofresh-store/index"],
        "embed_batch_size": ["64"],
    }
    refuses = {"store": ["/tmp/store", "gs://B/index"], "embed_batch_size": ["0", "x"]}
    for name, values in accepts.items():
        assert all(any(re.fullmatch(r, v) for r in params[name]["regexes"]) for v in values), name
    for name, values in refuses.items():
        assert not any(re.fullmatch(r, v) for v in values for r in params[name]["regexes"]), name


def load_flex_main():
    spec = importlib.util.spec_from_file_location("flex_main", INFRA / "dataflow" / "flex_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_the_launcher_builds_the_dataflow_job_from_template_parameters(sample_site, gcs_bucket, tmp_path, capsys):
    site = sample_site(0)
    sources = tmp_path / "sources.yaml"
    sources.write_text(f"sources:\n  - kind: site\n    name: sample\n    start_urls: ['{site.base_url}/']\n")
    # What Dataflow's launcher passes: the template's parameters, then the job's environment.
    argv = [
        f"--sources={sources}", f"--store=gs://{gcs_bucket}/index", "--embed_batch_size=32",
        "--project=retro-project", "--region=europe-west1", "--temp_location=gs://retro-scratch/tmp", "--dry_run=True",
    ]  # fmt: skip
    assert load_flex_main().main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["state"] == "DRY_RUN" and site.requests == []  # Dataflow, not run here: no runner was given
    assert result["dataflow_job"]["project"] == "retro-project" and "Embed" in result["dataflow_job"]["steps"]


def test_a_local_sources_path_is_left_alone():
    flex = load_flex_main()
    argv = ["--sources", "/opt/retrofresh/sources.yaml", "--store=gs://b/i"]
    assert flex.local_sources(argv) == argv
