"""Helpers for flow tests: read back what a flow run left in the Prefect API, write sources files."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import yaml

from model.server.ports import free_port

FAST_FETCH = {"crawl_delay_s": 0, "timeout_s": 2, "deadline_s": 10, "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05}


def write_sources(path: Path, base_url: str, **fetch) -> Path:
    """A sources file with one site source over a sample server (fast fetch settings, or ``fetch`` overrides)."""
    config = {"fetch": {**FAST_FETCH, **fetch}, "sources": [{"kind": "site", "name": "sample", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"]}]}
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


TOKEN = "s3cret"


class ReloadServer:
    """A server that answers POST /admin/reload like a RETRO server: 401 without the token."""

    def __init__(self, *, status: int = 200, version: str = "v000002-abc", refuse: bool = False):
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code, body = 401, {"detail": "missing or wrong bearer token"}
                elif status != 200:
                    code, body = status, {"detail": "reload failed: checksum mismatch"}
                elif refuse:
                    error = {"version": version, "error": "sha256 mismatch in shard s1", "kind": "checksum", "at": "2026-01-01T00:00:00Z"}
                    code, body = 200, {"current": version, "version": "v000001-old", "swapped": False, "error": error}
                else:
                    code, body = 200, {"current": version, "version": version, "swapped": True, "error": None}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url() -> str:
    """A loopback URL nothing listens on (at the time of asking)."""
    return f"http://127.0.0.1:{free_port()}"
