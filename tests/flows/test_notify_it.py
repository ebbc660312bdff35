"""Reload notifications against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect import flow

from flows.notify import notify_servers, request_reload
from model.client import RetroConnectionError, RetroHTTPError

pytestmark = pytest.mark.integration

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


def test_request_reload_sends_the_bearer_token_and_reads_the_version(reload_server):
    server = reload_server(version="v000007-ff")
    outcome = request_reload(server.url, token=TOKEN)
    assert outcome.ok and outcome.swapped and outcome.status == 200 and outcome.index_version == "v000007-ff"
    assert server.requests == [{"path": "/admin/reload", "auth": f"Bearer {TOKEN}"}]


def test_a_refused_reload_is_an_outcome_not_an_exception(reload_server):
    server = reload_server()
    outcome = request_reload(server.url, token="wrong")
    assert not outcome.ok and outcome.status == 401 and "bearer token" in outcome.detail


def test_a_server_that_refuses_the_new_version_is_not_ok_and_says_why(reload_server):
    outcome = request_reload(reload_server(refuse=True).url, token=TOKEN)
    assert not outcome.ok and not outcome.swapped and outcome.index_version == "v000001-old"
    assert "checksum" in outcome.detail and "sha256 mismatch" in outcome.detail


def test_server_errors_and_unreachable_servers_raise_transient_errors(reload_server):
    from flows.retry import is_transient

    with pytest.raises(RetroHTTPError) as info:
        request_reload(reload_server(status=503).url, token=TOKEN)
    assert is_transient(info.value)
    with pytest.raises(RetroConnectionError) as info:
        request_reload(dead_url(), token=TOKEN, timeout_s=2)
    assert is_transient(info.value)


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
