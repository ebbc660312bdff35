"""Helpers for flow tests: read back what a flow run left in the Prefect API, write sources files."""

from __future__ import annotations

import shutil
from pathlib import Path
from uuid import UUID

import yaml

FAST_FETCH = {"crawl_delay_s": 0, "timeout_s": 2, "deadline_s": 10, "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05}


def write_sources(path: Path, base_url: str) -> Path:
    """A sources file with one site source over a sample server (fast fetch settings)."""
    config = {"fetch": FAST_FETCH, "sources": [{"kind": "site", "name": "sample", "start_urls": [base_url + "/"], "allow_private": True}]}
    path.write_text(yaml.safe_dump(config))
    return path


def copy_store(src: Path, dst: Path) -> str:
    """An independent copy of a local store (tests must not change a shared one)."""
    shutil.copytree(src, dst)
    return str(dst)


def flow_run_id(state) -> UUID:
    return state.state_details.flow_run_id


def artifacts_of(run_id: UUID) -> dict[str, object]:
    """The keyed artifacts a flow run created, by key (the newest per key)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {a.key: a for a in sorted(found, key=lambda a: a.created) if a.key}


def task_run_names(run_id: UUID) -> list[str]:
    """Names of the task runs of a flow run (e.g. ``take-lease-1a2``), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return [r.name for r in sorted(runs, key=lambda r: r.created)]
