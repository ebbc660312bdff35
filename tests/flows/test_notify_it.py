"""Reload notifications against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect import flow

from flows.notify import notify_servers, reload_url, request_reload

pytestmark = pytest.mark.integration

TOKEN = "s3cret"


class ReloadServer:
    """A server that answers POST /admin/reload like a RETRO server: 401 without the token."""

    def __init__(self, *, status: int = 200, version: str = "v000002-abc"):
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code, body = 401, {"detail": "missing or wrong bearer token"}
                elif status != 200:
                    code, body = status, {"detail": "reload failed: checksum mismatch"}
                else:
                    code, body = 200, {"index_version": version, "reloaded": True}
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


@pytest.fixture
def reload_server():
    servers = []

    def make(**kwargs) -> ReloadServer:
        servers.append(ReloadServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_reload_url():
    assert reload_url("http://h:1") == "http://h:1/admin/reload"
    assert reload_url("http://h:1/") == "http://h:1/admin/reload"
    assert reload_url("http://h:1/admin/reload") == "http://h:1/admin/reload"


def test_request_reload_sends_the_bearer_token_and_reads_the_version(reload_server):
    server = reload_server(version="v000007-ff")
    outcome = request_reload(server.url, token=TOKEN)
    assert outcome.ok and outcome.status == 200 and outcome.index_version == "v000007-ff"
    assert server.requests == [{"path": "/admin/reload", "auth": f"Bearer {TOKEN}"}]


def test_a_refused_reload_is_an_outcome_not_an_exception(reload_server):
    server = reload_server()
    outcome = request_reload(server.url, token="wrong")
    assert not outcome.ok and outcome.status == 401 and "bearer token" in outcome.detail


def test_server_errors_and_unreachable_servers_raise_so_the_task_retries(reload_server):
    with pytest.raises(httpx.HTTPStatusError):
        request_reload(reload_server(status=503).url, token=TOKEN)
    with pytest.raises(httpx.TransportError):
        request_reload(dead_url(), token=TOKEN, timeout_s=2)


def test_notify_servers_reports_each_server_and_survives_a_dead_one(prefect_api, reload_server):
    good, failing = reload_server(), reload_server(status=500)
    dead = dead_url()

    @flow
    def notify_all():
        return notify_servers([good.url, failing.url, dead], TOKEN, timeout_s=2, retry_delays_s=(0, 0))

    outcomes = notify_all()
    assert [o.url for o in outcomes] == [good.url, failing.url, dead]
    assert outcomes[0].ok and outcomes[0].index_version == "v000002-abc"
    assert not outcomes[1].ok and "500" in outcomes[1].detail
    assert not outcomes[2].ok
    assert len(good.requests) == 1
    assert len(failing.requests) == 3  # the first attempt and two retries: 5xx is transient
