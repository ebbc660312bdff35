"""The Dataflow REST state source against a local HTTP server speaking the jobs.get shape."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from flows.tasks._dataflow import DataflowJob, DataflowJobFailed, RestJobStateSource, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture
def jobs_api():
    """A tiny stand-in for dataflow.googleapis.com: each GET returns the next scripted state."""
    script = {"states": ["JOB_STATE_RUNNING", "JOB_STATE_DONE"], "paths": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            script["paths"].append(self.path)
            if self.path.split("?")[0].endswith("/metrics"):
                metrics = [{"name": {"origin": "user", "name": "new", "context": {"namespace": "retrofresh", "step": "Diff"}}, "scalar": 4},
                           {"name": {"origin": "user", "name": "new", "context": {"namespace": "retrofresh", "step": "Diff", "tentative": "true"}}, "scalar": 5}]
                body = json.dumps({"metrics": metrics}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if "/jobs/missing" in self.path:
                self.send_response(404)
                self.end_headers()
                return
            state = script["states"].pop(0) if len(script["states"]) > 1 else script["states"][0]
            body = json.dumps({"id": self.path.rsplit("/", 1)[-1], "currentState": state}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", script
    server.shutdown()
    server.server_close()


def test_rest_source_reads_the_job_state_from_the_jobs_get_endpoint(jobs_api):
    url, script = jobs_api
    source = RestJobStateSource(endpoint=url, session=requests.Session())
    job = DataflowJob("job-1", "proj", "us-central1")
    report = wait_for_job(job, source, poll_interval_s=0)
    assert report.states == ["JOB_STATE_RUNNING", "JOB_STATE_DONE"]
    assert script["paths"][0].startswith("/v1b3/projects/proj/locations/us-central1/jobs/job-1?")
    assert source.counters(job, "retrofresh") == {"new": 4}
    assert script["paths"][-1] == "/v1b3/projects/proj/locations/us-central1/jobs/job-1/metrics"


def test_rest_source_failure_state_and_http_errors(jobs_api):
    url, script = jobs_api
    script["states"] = ["JOB_STATE_FAILED"]
    source = RestJobStateSource(endpoint=url, session=requests.Session())
    with pytest.raises(DataflowJobFailed):
        wait_for_job(DataflowJob("job-2", "p", "r"), source, poll_interval_s=0)
    with pytest.raises(requests.HTTPError):
        source.state(DataflowJob("missing", "p", "r"))
