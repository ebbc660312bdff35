"""The change webhook on a real uvicorn server: a stranger's body is never read, a caller's is capped."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from beam_jobs.sources import SourcesConfig
from flows._webhook import MAX_BODY_BYTES, MAX_URL_CHARS, create_webhook_app
from tests.fixtures.server import serve_app
from tests.flows.support import dead_url

pytestmark = pytest.mark.integration

TOKEN = "s3cret"
SITE = "http://127.0.0.1:8000"
CONFIG = SourcesConfig.model_validate({"sources": [{"kind": "site", "name": "site", "start_urls": [f"{SITE}/"], "allow_private": True}]})


@pytest.fixture
def webhook():
    """Start the webhook (token ``s3cret``) on a free loopback port; yields (url, announced) and stops it."""

    def make(token, *, prefect_api: str | None = None):
        """``prefect_api``: announce real Prefect events to this API instead of recording them in a list."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        announced: list = []
        record = None if prefect_api else (lambda source, urls: announced.append((source, urls)) or 1)
        app = create_webhook_app(CONFIG, "/tmp/store", token, announce=record)
        running = serve_app(app, timeout=30, context=lambda: temporary_settings({PREFECT_API_URL: prefect_api} if prefect_api else {}))
        started.append(running)
        return running.url, announced

    started: list = []
    yield make
    for running in started:
        running.stop(10)


def answer_to_headers_alone(url: str, headers: str) -> bytes:
    """Send a request's head announcing a 100 MB body, send none of it, and return the answer.

    A server that waits for the body before answering times out here (5 s).
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST /v1/changed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                     f"Content-Length: 100000000\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            received = sock.recv(4096)
            if not received:
                break
            answer += received
        return answer


def _length(answer: bytes) -> int:
    head = answer.partition(b"\r\n\r\n")[0].lower()
    return int(head.partition(b"content-length: ")[2].split(b"\r\n")[0] or 0)


def test_a_stranger_is_refused_before_the_body_is_read(webhook):
    url, announced = webhook(TOKEN)
    assert answer_to_headers_alone(url, "").startswith(b"HTTP/1.1 401")
    assert answer_to_headers_alone(url, "Authorization: Bearer nope\r\n").startswith(b"HTTP/1.1 401")
    closed, _ = webhook(None)
    assert answer_to_headers_alone(closed, f"Authorization: Bearer {TOKEN}\r\n").startswith(b"HTTP/1.1 403")
    assert announced == []


def test_an_oversized_body_is_413_before_it_is_read_declared_or_streamed(webhook):
    url, announced = webhook(TOKEN)
    answer = answer_to_headers_alone(url, f"Authorization: Bearer {TOKEN}\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"max_body_bytes" in answer

    def streamed():  # no Content-Length: the webhook must count as the body arrives
        yield b'{"urls": ["' + f"{SITE}/a".encode() + b'", "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536
        yield b'"]}'

    answer = httpx.post(f"{url}/v1/changed", content=streamed(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 413 and answer.json()["limit"] == "max_body_bytes"
    assert announced == []


def test_an_overlong_url_is_refused_and_the_rest_announced(webhook):
    url, announced = webhook(TOKEN)
    long = f"{SITE}/" + "a" * MAX_URL_CHARS
    answer = httpx.post(f"{url}/v1/changed", headers={"Authorization": f"Bearer {TOKEN}"}, json={"urls": [long, f"{SITE}/b"]})
    assert answer.status_code == 202, answer.text
    (refused_url, why), = answer.json()["refused"]
    assert refused_url == long and f"longer than {MAX_URL_CHARS} characters" in why
    assert announced == [("site", [f"{SITE}/b"])]
    # A full request of the longest URLs fits under the body limit.
    assert len(json.dumps({"urls": [f"{SITE}/" + "a" * (MAX_URL_CHARS - len(SITE) - 1)] * 1000})) < MAX_BODY_BYTES


def test_changes_the_prefect_api_did_not_take_are_a_503_not_a_202(webhook, caplog):
    url, _ = webhook(TOKEN, prefect_api=dead_url() + "/api")
    answer = httpx.post(f"{url}/v1/changed", headers={"Authorization": f"Bearer {TOKEN}"}, json={"urls": [f"{SITE}/a"]}, timeout=60)
    assert answer.status_code == 503, answer.text
    assert "did not take 1 of 1 retrofresh.source.changed events" in answer.json()["detail"]
    assert any("webhook:" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
