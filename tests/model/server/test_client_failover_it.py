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

from model.client import (
    AsyncRetroClient,
    RetroBadResponse,
    RetroClient,
    RetroConnectionError,
    RetroHTTPError,
    RetroStaleVersion,
    RetroTimeout,
)
from model.server.schemas import IndexInfo, Readiness
from tests.fixtures.server import free_port

pytestmark = pytest.mark.integration


class Replica:
    """A server that answers GETs and POSTs with ``status`` and a body naming itself; counts requests.

    ``delay_s`` holds each answer back (released at once by :meth:`close`, so a hung replica does not
    hold the test up); ``body`` replaces the answer's bytes; ``version`` is the index version its
    retrieve answers come from. All three may be changed while it runs.
    """

    def __init__(self, name: str, status: int = 200, delay_s: float = 0.0, body: bytes | None = None, version: str = "v000001-aa"):
        self.name, self.status, self.delay_s, self.body, self.version = name, status, delay_s, body, version
        self.requests: list[str] = []
        self.released = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                owner.requests.append(self.path)
                owner.released.wait(owner.delay_s)
                if owner.status == 503 and self.path == "/readyz":
                    body = Readiness(ready=False, retrieval=False, reason=f"{owner.name} has no version loaded").model_dump()
                elif owner.status == 503:
                    body = {"detail": f"{owner.name} is busy", "limit": "max_inflight", "maximum": 1}
                elif owner.status >= 400:
                    body = {"detail": f"{owner.name} says no"}
                elif self.path == "/readyz":
                    body = Readiness(ready=True, retrieval=True, index_version=f"v-{owner.name}").model_dump()
                elif self.path == "/v1/retrieve":
                    body = {"index_version": owner.version, "results": [[]]}
                else:
                    body = {"status": "ok", "name": owner.name}
                data = owner.body if owner.body is not None else json.dumps(body).encode()
                try:
                    self.send_response(owner.status)
                    if owner.status == 503:
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
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


def test_client_errors_are_not_failed_over(replica):
    refusing, b = replica("refusing", status=404), replica("b")
    with RetroClient([refusing.url, b.url]) as client:
        with pytest.raises(RetroHTTPError) as info:
            client._request("GET", "/v1/index")
        assert info.value.status_code == 404 and "refusing says no" in info.value.message
    assert b.requests == []  # a wrong request is wrong on every replica


def test_a_hung_replica_is_left_for_the_next_and_not_asked_again(replica):
    hung, b = replica("hung", delay_s=60.0), replica("b")
    with RetroClient([hung.url, b.url], timeout=0.5) as client:
        assert [client.healthz() for _ in range(3)] == [True, True, True]
        assert client.url == b.url
    assert hung.requests == ["/healthz"] and b.requests == ["/healthz"] * 3


def test_a_replica_answering_500_is_left_for_the_next_and_not_asked_again(replica):
    failing, b = replica("failing", status=500), replica("b")
    with RetroClient([failing.url, b.url]) as client:
        assert [name_of(client._request("GET", "/v1/index")) for _ in range(4)] == ["b"] * 4
        assert client.url == b.url
    assert failing.requests == ["/v1/index"]


def test_with_every_replica_failing_the_error_names_each(replica):
    hung, failing = replica("hung", delay_s=60.0), replica("failing", status=500)
    with RetroClient([hung.url, failing.url], timeout=0.3, retries=3, backoff_s=1.0) as client:
        start = time.monotonic()
        with pytest.raises(RetroHTTPError) as info:
            client.healthz()
        assert time.monotonic() - start < 1.0  # answers (even bad ones) end the request: no backoff rounds
    assert info.value.status_code == 500
    assert f"{hung.url}: timed out after 0.3s" in info.value.message and f"{failing.url}: HTTP 500: failing says no" in info.value.message
    # One replica alone: its own error, as before.
    with RetroClient(hung.url, timeout=0.3) as client:
        with pytest.raises(RetroTimeout, match=f"{hung.url}/healthz timed out after 0.3s"):
            client.healthz()


def test_a_replica_that_keeps_failing_cools_down_then_is_tried_again(replica):
    failing, b = replica("failing", status=500), replica("b")
    with RetroClient([failing.url, b.url], cooldown_after=2, cooldown_s=0.5) as client:
        assert client.healthz()  # failing: 1 failure, b answers and becomes the active replica
        b.status = 503
        with pytest.raises(RetroHTTPError, match="no server could answer"):
            client.healthz()  # b busy, failing fails again: 2 in a row, it cools down
        assert len(failing.requests) == 2
        with pytest.raises(RetroHTTPError) as info:
            client.healthz()  # only b is asked
        assert len(failing.requests) == 2 and f"{failing.url}: skipped: failed 2 times in a row" in info.value.message
        time.sleep(0.5)
        b.status = 200
        failing.status = 200
        client._active = 0  # the cooled-down replica first again, as after a restart of the caller
        assert name_of(client._request("GET", "/v1/index")) == "failing"  # its cool-down is over


def test_every_replica_cooling_down_is_still_tried(replica):
    a, b = replica("a", status=500), replica("b", status=500)
    with RetroClient([a.url, b.url], cooldown_after=1, cooldown_s=60) as client:
        for _ in range(2):
            with pytest.raises(RetroHTTPError):
                client.healthz()
    assert len(a.requests) == len(b.requests) == 2  # never refused without asking anyone


@pytest.mark.parametrize("body, why", [(b"<html>oops</html>", "not JSON"), (b'{"versions": []}', "not the expected answer: version: Field required"),
                                       (b"[1, 2]", "not the expected answer")])
def test_an_unreadable_answer_is_a_retro_error_and_fails_over(replica, body, why):
    broken, b = replica("broken", body=body), replica("b", body=IndexInfo(version="v000003-ab").model_dump_json().encode())
    with RetroClient(broken.url) as client:
        with pytest.raises(RetroBadResponse, match=f"GET {broken.url}/v1/index answered 200 with a body that is {why}"):
            client.index()
    with RetroClient([broken.url, b.url]) as client:
        assert client.index().version == "v000003-ab" and client.url == b.url
    assert broken.requests == ["/v1/index", "/v1/index"]


def test_an_unreadable_health_or_readiness_answer_is_a_retro_error(replica):
    broken = replica("broken", body=b"not json")
    with RetroClient(broken.url) as client:
        with pytest.raises(RetroBadResponse):
            client.healthz()
        with pytest.raises(RetroBadResponse):
            client.ready()


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


def test_the_index_never_moves_back_when_a_lagging_replica_takes_over(replica):
    """A serves v15, B lags at v14, C has v15 too: when A dies, the answer comes from C, not B."""
    a, b, c = replica("a", version="v000015-aa"), replica("b", version="v000014-bb"), replica("c", version="v000015-cc")
    with RetroClient([a.url, b.url, c.url], retries=0) as client:
        assert client.retrieve("q").index_version == "v000015-aa" and client.newest_version == "v000015-aa"
        a.close()
        assert client.retrieve("q").index_version == "v000015-cc" and client.url == c.url
        assert b.requests == ["/v1/retrieve"]  # asked, answered from v14, passed over


def test_with_only_lagging_replicas_left_the_client_says_so_until_one_catches_up(replica):
    a, b = replica("a", version="v000015-aa"), replica("b", version="v000014-bb")
    with RetroClient([a.url, b.url], retries=0) as client:
        assert client.retrieve("q").index_version == "v000015-aa"
        a.close()
        with pytest.raises(RetroStaleVersion, match="no replica serves index version v000015-aa or newer") as info:
            client.retrieve("q")
        assert info.value.newest == "v000015-aa" and info.value.served == {b.url: "v000014-bb"}
        assert f"{b.url}: serves v000014-bb" in str(info.value)
        b.version = "v000016-bb"  # b caught up (and moved on)
        assert client.retrieve("q").index_version == "v000016-bb" and client.newest_version == "v000016-bb"


def test_a_rollback_is_taken_once_no_replica_serves_the_newer_version_for_the_grace(replica):
    a, b = replica("a", version="v000015-aa"), replica("b", version="v000015-aa")
    with RetroClient([a.url, b.url], regression_grace_s=0.3) as client:
        assert client.retrieve("q").index_version == "v000015-aa"
        a.version = b.version = "v000012-cc"  # CURRENT rolled back: both follow it
        with pytest.raises(RetroStaleVersion):
            client.retrieve("q")
        time.sleep(0.3)
        assert client.retrieve("q").index_version == "v000012-cc" and client.regressions == 1
        assert client.retrieve("q").index_version == "v000012-cc" and client.regressions == 1
    # One URL: no other replica to prefer, and a lone server moves back only on a rollback.
    with RetroClient(a.url) as client:
        client.newest_version = "v000015-aa"
        assert client.retrieve("q").index_version == "v000012-cc" and client.regressions == 1


def test_per_replica_calls_report_what_each_serves_without_the_version_check(replica):
    a, b = replica("a", version="v000015-aa"), replica("b", body=IndexInfo(version="v000014-bb").model_dump_json().encode())
    with RetroClient([a.url, b.url], retries=0) as client:
        client.retrieve("q")
        a.close()
        assert client.index().version == "v000014-bb"  # what b serves, as asked
