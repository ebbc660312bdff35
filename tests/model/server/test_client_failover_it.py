"""RetroClient and AsyncRetroClient over several replicas: failover on connection errors and 503s.

The replicas are small real HTTP servers on 127.0.0.1 that answer like a RETRO server (or refuse
to), so each test can tell which replica a request reached.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model.client import AsyncRetroClient, RetroClient, RetroConnectionError, RetroHTTPError, RetroTimeout
from model.schemas import Readiness
from tests.fixtures.server import free_port

pytestmark = pytest.mark.integration


class Replica:
    """A server that answers every GET with ``status`` and a body naming itself; counts requests."""

    def __init__(self, name: str, status: int = 200, delay_s: float = 0.0):
        self.name, self.status, self.delay_s = name, status, delay_s
        self.requests: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.requests.append(self.path)
                time.sleep(owner.delay_s)
                if owner.status == 503 and self.path == "/readyz":
                    body = Readiness(ready=False, retrieval=False, reason=f"{owner.name} has no version loaded").model_dump()
                elif owner.status == 503:
                    body = {"detail": f"{owner.name} is busy", "limit": "max_inflight", "maximum": 1}
                elif owner.status >= 400:
                    body = {"detail": f"{owner.name} says no"}
                elif self.path == "/readyz":
                    body = Readiness(ready=True, retrieval=True, index_version=f"v-{owner.name}").model_dump()
                else:
                    body = {"status": "ok", "name": owner.name}
                data = json.dumps(body).encode()
                self.send_response(owner.status)
                if owner.status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def replica():
    started: list[Replica] = []

    def make(name: str, **kwargs) -> Replica:
        started.append(Replica(name, **kwargs))
        return started[-1]

    yield make
    for r in started:
        r.close()


def dead() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def name_of(response) -> str:
    return response.json()["name"]


def test_a_dead_replica_is_skipped_and_the_client_stays_on_the_one_that_answered(replica):
    b = replica("b")
    gone = dead()
    with RetroClient([gone, b.url], retries=0) as client:
        assert client.url == gone
        assert name_of(client._request("GET", "/healthz")) == "b"
        assert client.url == b.url  # sticky: the next request does not try the dead one first
        assert client.healthz() and b.requests == ["/healthz", "/healthz"]


def test_a_503_moves_on_to_the_next_replica(replica):
    busy, b = replica("busy", status=503), replica("b")
    with RetroClient([busy.url, b.url], retries=0) as client:
        assert name_of(client._request("GET", "/v1/index")) == "b"
        assert busy.requests == ["/v1/index"] and client.url == b.url


def test_every_replica_at_503_is_the_last_answer_naming_each_and_no_retry_round(replica):
    one, two = replica("one", status=503), replica("two", status=503)
    with RetroClient([one.url, two.url], retries=3, backoff_s=1.0) as client:
        with pytest.raises(RetroHTTPError) as info:
            client._request("GET", "/v1/index")
        # Not ready anywhere is an answer, not an error: ready() returns it.
        assert client.ready().ready is False
    error = info.value
    assert error.status_code == 503 and error.limit == "max_inflight"
    assert f"{one.url}: HTTP 503: one is busy" in error.message and f"{two.url}: HTTP 503: two is busy" in error.message
    # A 503 is the servers' answer: each was asked once per call, no backoff rounds.
    assert one.requests == two.requests == ["/v1/index", "/readyz"]


def test_ready_reports_the_first_ready_replica(replica):
    warming, ready = replica("warming", status=503), replica("ready")
    with RetroClient([warming.url, ready.url]) as client:
        assert client.ready().index_version == "v-ready"


def test_no_replica_reachable_names_each_after_the_rounds(replica):
    urls = [dead(), dead()]
    start = time.monotonic()
    with RetroClient(urls, retries=1, backoff_s=0.1) as client:
        with pytest.raises(RetroConnectionError) as info:
            client.healthz()
    assert time.monotonic() - start >= 0.1  # one backoff between the two rounds
    message = str(info.value)
    assert "failed on all 2 servers after 2 attempts each" in message
    assert all(f"{url}: ConnectError" in message for url in urls)


def test_a_replica_that_comes_back_is_found_in_a_later_round():
    from tests.model.server.test_client_it import serve_later

    port = free_port()
    _, started = serve_later(port, 0.3)
    try:
        with RetroClient([dead(), f"http://127.0.0.1:{port}"], retries=6, backoff_s=0.1) as client:
            assert client.healthz() and client.url.endswith(f":{port}")
    finally:
        for httpd in started:
            httpd.shutdown()
            httpd.server_close()


def test_client_errors_and_timeouts_are_not_failed_over(replica):
    refusing, slow, b = replica("refusing", status=404), replica("slow", delay_s=1.0), replica("b")
    with RetroClient([refusing.url, b.url]) as client:
        with pytest.raises(RetroHTTPError) as info:
            client._request("GET", "/v1/index")
        assert info.value.status_code == 404 and "refusing says no" in info.value.message
    # The slow replica may still be working on it: sending it elsewhere too would double the work.
    with RetroClient([slow.url, b.url], timeout=0.3) as client:
        with pytest.raises(RetroTimeout, match=f"{slow.url}/healthz timed out"):
            client.healthz()
    assert b.requests == []


def test_async_client_fails_over_the_same_way(replica):
    busy, b = replica("busy", status=503), replica("b")

    async def run():
        async with AsyncRetroClient([dead(), busy.url, b.url], retries=0) as client:
            assert name_of(await client._request("GET", "/v1/index")) == "b"
            assert client.url == b.url
        async with AsyncRetroClient([dead(), dead()], retries=0) as client:
            with pytest.raises(RetroConnectionError, match="failed on all 2 servers"):
                await client.healthz()

    asyncio.run(run())


def test_a_bad_url_list_is_refused_up_front():
    for bad in ([], [""], ["http://127.0.0.1:1", None]):
        with pytest.raises(ValueError, match="server base URL"):
            RetroClient(bad)
