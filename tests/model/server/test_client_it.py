"""RetroClient and AsyncRetroClient against small real HTTP servers: retries, timeouts, error bodies."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model.client import AsyncRetroClient, RetroClient, RetroConnectionError, RetroHTTPError, RetroTimeout
from tests.fixtures.server import free_port

pytestmark = pytest.mark.integration


class Handler(BaseHTTPRequestHandler):
    """/healthz answers ok; /slow sleeps; /v1/index answers a proxy-style 502 in plain text."""

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/v1/index":
            body, status, kind = b"upstream went away", 502, "text/plain"
        else:
            body, status, kind = json.dumps({"status": "ok"}).encode(), 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def serve_later(port: int, delay: float) -> tuple[threading.Thread, list]:
    holder: list = []

    def run():
        time.sleep(delay)
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        holder.append(httpd)
        httpd.serve_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, holder


@pytest.fixture
def plain_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_connection_errors_are_retried_then_raised():
    port = free_port()  # nothing listens here
    start = time.monotonic()
    with RetroClient(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.1) as client:
        with pytest.raises(RetroConnectionError, match="after 3 attempts"):
            client.healthz()
    assert time.monotonic() - start >= 0.3  # waited 0.1 + 0.2 between the attempts


def test_a_server_that_comes_up_during_the_retries_is_reached():
    port = free_port()
    _, started = serve_later(port, 0.3)
    try:
        with RetroClient(f"http://127.0.0.1:{port}", retries=6, backoff_s=0.1) as client:
            assert client.healthz()
    finally:
        for httpd in started:
            httpd.shutdown()
            httpd.server_close()


def test_timeouts_raise_retro_timeout(plain_server):
    with RetroClient(plain_server, timeout=0.3) as client:
        with pytest.raises(RetroTimeout, match="timed out after 0.3s"):
            client._request("GET", "/slow")


def test_a_non_json_error_body_still_becomes_the_message(plain_server):
    with RetroClient(plain_server) as client:
        with pytest.raises(RetroHTTPError) as err:
            client.index()
    assert (err.value.status_code, err.value.message, err.value.limit) == (502, "upstream went away", None)


def test_async_client_retries_and_errors(plain_server):
    async def run():
        async with AsyncRetroClient(plain_server) as client:
            assert await client.healthz()
            with pytest.raises(RetroHTTPError):
                await client.index()
        async with AsyncRetroClient(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.05) as client:
            with pytest.raises(RetroConnectionError, match="after 2 attempts"):
                await client.healthz()

    asyncio.run(run())


def test_bad_arguments_fail_in_the_client_before_any_request():
    with RetroClient("http://127.0.0.1:9", retries=0) as client:
        with pytest.raises(ValueError, match="greater than or equal to 1"):
            client.retrieve("x", k=0)
        with pytest.raises(ValueError, match="Extra inputs"):
            client.generate("x", max_new_token=3)
    with pytest.raises(ValueError, match="retries"):
        RetroClient("http://127.0.0.1:9", retries=-1)
