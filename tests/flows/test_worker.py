"""The warm worker's pieces that need no Prefect server: which runs it keeps in its process, what it preloads."""

from __future__ import annotations

import pytest
from prefect.workers.process import ProcessJobConfiguration

from flows.worker import preload, warm_entrypoint


def configuration(**fields) -> ProcessJobConfiguration:
    """A job configuration as the worker hands it to ``run``: prepared for a flow run."""
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    prepared = ProcessJobConfiguration(**fields)
    prepared.prepare_for_flow_run(FlowRun(flow_id=uuid4()))
    return prepared


@pytest.mark.parametrize("entrypoint, pull_steps, fields, warm", [
    ("flows.refresh_changed:refresh_changed", None, {}, True),
    ("flows.refresh_changed:refresh_changed", [], {"env": {"PREFECT_LOGGING_LEVEL": "INFO"}}, True),  # Prefect's own per-run variables
    ("flows/refresh_changed.py:refresh_changed", None, {}, False),  # a file: code the worker may not have
    ("flows.refresh_changed:refresh_changed", [{"prefect.deployments.steps.git_clone": {"repository": "r"}}], {}, False),  # code to pull
    ("flows.refresh_changed:refresh_changed", None, {"env": {"RETROFRESH_STORE": "/elsewhere"}}, False),  # an environment of its own
    ("flows.refresh_changed:refresh_changed", None, {"command": "python -m something"}, False),  # a command of its own
    (None, None, {}, False),
])
def test_only_installed_code_with_nothing_of_its_own_runs_inside_the_worker(monkeypatch, entrypoint, pull_steps, fields, warm):
    monkeypatch.delenv("RETROFRESH_STORE", raising=False)
    assert warm_entrypoint(entrypoint, pull_steps, configuration(**fields)) == (entrypoint if warm else None)


def test_the_worker_preloads_the_encoder_the_ingest_acquires(monkeypatch):
    """Preloading at another tag than the job's (precision) would be replaced at the first run."""
    from beam_jobs.embed import ChunkEmbeddingHandler
    from model.contracts.settings import get_settings

    monkeypatch.setenv("RETROFRESH_PRECISION", "auto")  # the default outside the tests, which pin fp32
    loaded = preload((), embedder=True)
    assert ChunkEmbeddingHandler(None, max_length=128, precision=get_settings().precision).load_model() is loaded
