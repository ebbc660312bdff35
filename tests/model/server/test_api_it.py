"""The HTTP API over real uvicorn on 127.0.0.1: every endpoint, its limits, and the client's errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from model.client import AsyncRetroClient, RetroClient, RetroHTTPError
from tests.fixtures.server import ADMIN_TOKEN, label_of, start_server
from tests.fixtures.waiting import wait_for
from tests.fixtures.numerics import assert_close

pytestmark = pytest.mark.integration

LIMITS = dict(
    max_k=4, max_batch=8, max_body_bytes=20_000, max_prompt_tokens=300, max_new_tokens=40, max_query_chars=2000, batch_window_ms=20.0
)
PROMPT = "In edition A, the harbour master of the old port changed. Everyone reading edition A learns it. " * 4


@pytest.fixture(scope="module")
def api(new_labelled_store, server_settings):
    """One server over a store with one published version (label A)."""
    store = new_labelled_store()
    version = store.publish("A")
    server = start_server(server_settings(store.uri, **LIMITS))
    try:
        with RetroClient(server.url) as client:
            client.wait_ready(timeout=60)
            yield server, client, store, version
    finally:
        server.stop()


def test_health_and_readiness(api):
    server, client, _, version = api
    assert client.healthz()
    ready = client.ready()
    assert (ready.ready, ready.retrieval, ready.index_version) == (True, True, version)


def test_openapi_schema_and_docs(api):
    server, *_ = api
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/healthz", "/readyz", "/v1/index", "/v1/retrieve", "/v1/generate", "/v1/score", "/admin/reload", "/metrics"):
        assert path in schema["paths"], path
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


ROUTES = ("/v1/retrieve", "/v1/generate", "/v1/score", "/v1/index", "/admin/reload", "/healthz")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.parametrize("page, assets", [("/docs", 4), ("/redoc", 3)])
def test_docs_pages_reference_only_assets_this_server_serves(api, page, assets):
    """No CDN: every script, style, icon and schema the page names is a path on this server, and is served."""
    server, *_ = api
    html = httpx.get(f"{server.url}{page}").text
    refs = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl: *['"]([^'"]+)['"]""", html)
    refs = [a or b for a, b in refs]
    assert len(refs) == assets and "//" not in html.replace("window.location.origin + '/docs/oauth2-redirect'", ""), html
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref
        got = httpx.get(f"{server.url}{ref}")
        assert got.status_code == 200 and len(got.content) > 1000, (ref, got.status_code)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no headless browser here: {CHROMIUM} is missing (Debian: apt-get install -y chromium)")
def test_docs_render_the_routes_in_a_headless_browser_offline(api, tmp_path):
    """Swagger UI, rendered by a real browser that can resolve no host but the loopback address, lists the API's routes."""
    server, *_ = api
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        # Every host name fails to resolve: a page that needed a CDN would render nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=20000", "--dump-dom", f"{server.url}/docs",
    ]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180, check=True).stdout
    assert 'class="swagger-ui"' in dom, dom[-2000:]
    missing = [route for route in ROUTES if f'data-path="{route}"' not in dom]  # one operation block per route
    assert not missing, f"routes not rendered: {missing}\n{dom[-2000:]}"


def test_index_describes_the_loaded_version(api):
    _, client, store, version = api
    info = client.index()
    manifest = store.store.manifest(version)
    assert info.version == version
    assert info.created_at == manifest.created_at
    assert (info.documents, info.chunks) == (manifest.stats.documents, manifest.stats.chunks)
    assert info.watermark == manifest.watermark
    assert info.loaded_at is not None and info.loaded_at >= manifest.created_at
    assert info.retrieval and info.last_error is None and info.swaps == 1


def test_retrieve_one_text_and_a_batch(api, query_embedder):
    _, client, store, version = api
    single = client.retrieve("who is the harbour master of the old port?", k=3)
    assert single.index_version == version
    assert len(single.results) == 1 and len(single.results[0]) == 3
    texts = ["the mayor of the river town", "opening hours of the public library", "price of bread"]
    batch = client.retrieve(texts, k=2)
    assert [len(row) for row in batch.results] == [2, 2, 2]
    # The same answers as searching the version directly with the same embedder.
    with store.store.open(version) as view:
        direct = view.search(query_embedder.encode(texts), 2)
    assert [[n.chunk_id for n in row] for row in batch.results] == [[n.chunk_id for n in row] for row in direct]
    for row, want in zip(batch.results, direct):
        assert_close([n.score for n in row], [n.score for n in want], magnitude=1.0)  # the server embeds in fixed shapes: other kernels
        for got, exp in zip(row, want):
            assert (got.url, got.text) == (exp.url, exp.text)
            assert label_of(got.url) == "A"
            assert got.continuation == store.tokenizer.decode(exp.continuation)


def test_concurrent_retrieves_share_batches(api, query_embedder):
    server, client, store, version = api
    batcher = server.state.batcher
    texts = [f"who is item A-{i % 6} in edition A, report {i}?" for i in range(16)]

    async def fire():
        async with AsyncRetroClient(server.url) as aclient:
            return await asyncio.gather(*(aclient.retrieve(t, k=2) for t in texts))

    before = batcher.batches
    answers = asyncio.run(fire())
    batches = batcher.batches - before
    assert 1 <= batches < len(texts), f"{len(texts)} concurrent requests took {batches} embed+search calls"
    with store.store.open(version) as view:
        direct = view.search(query_embedder.encode(texts), 2)
    for answer, want in zip(answers, direct):  # batching never mixes up whose answer is whose
        assert [n.chunk_id for n in answer.results[0]] == [n.chunk_id for n in want]


def test_generate_with_and_without_retrieval(api):
    _, client, store, version = api
    on = client.generate(PROMPT, max_new_tokens=12, seed=7)
    assert on.retrieval and on.index_version == version and on.note is None
    assert on.prompt_tokens == len(store.tokenizer.encode(PROMPT))
    assert 1 <= on.generated_tokens <= 12
    assert on.neighbours and all(len(chunk) == 2 for chunk in on.neighbours)  # the model's k
    assert {label_of(n.url) for chunk in on.neighbours for n in chunk} == {"A"}
    assert client.generate(PROMPT, max_new_tokens=12, seed=7).text == on.text  # a seed makes it repeatable
    off = client.generate(PROMPT, max_new_tokens=5, retrieval=False, temperature=0)
    assert (off.retrieval, off.index_version, off.neighbours) == (False, None, [])
    k1 = client.generate(PROMPT, max_new_tokens=3, k=1, top_k=5, top_p=0.9, seed=1)
    assert all(len(chunk) == 1 for chunk in k1.neighbours)
    # The extremes of the accepted ranges are answered (their limit: greedy), never a 500.
    greedy = client.generate(PROMPT, max_new_tokens=5, temperature=0, seed=1).text
    for extreme in ({"temperature": 1e-45}, {"temperature": 5e-324}, {"top_p": 1e-300}):
        assert client.generate(PROMPT, max_new_tokens=5, seed=1, **extreme).text == greedy, extreme


def test_score_with_and_without_retrieval(api):
    _, client, store, version = api
    text = PROMPT * 2
    on = client.score(text)
    off = client.score(text, retrieval=False)
    assert on.retrieval and on.index_version == version
    assert not off.retrieval and off.index_version is None
    for result in (on, off):
        assert result.tokens == len(store.tokenizer.encode(text)) - 1
        assert result.loss > 0 and result.bits_per_byte > 0
    assert on.loss != off.loss  # neighbours change the prediction


def test_metrics_exposition(api):
    server, client, _, version = api
    client.retrieve("bread", k=1)
    text = client.metrics()
    assert 'retrofresh_requests_total{method="POST",route="/v1/retrieve",status="200"}' in text
    assert "retrofresh_request_seconds_bucket" in text
    assert f'retrofresh_index_version_info{{version="{version}"}} 1.0' in text
    assert "retrofresh_index_swaps_total 1.0" in text
    assert "retrofresh_index_age_seconds" in text
    assert "retrofresh_index_swap_failures_total" in text


def test_admin_reload_needs_the_bearer_token(api):
    server, client, _, version = api
    missing = httpx.post(f"{server.url}/admin/reload")
    assert missing.status_code == 401 and "bearer" in missing.json()["detail"]
    wrong = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong bearer token"
    with pytest.raises(RetroHTTPError) as err:
        client.reload("nope")
    assert err.value.status_code == 401
    ok = client.reload(ADMIN_TOKEN)
    assert (ok.current, ok.version, ok.swapped, ok.error) == (version, version, False, None)


TOO_MANY_TOKENS = "harbour " * 400  # ~400 tokens > max_prompt_tokens=300


@pytest.mark.parametrize(
    "path, body, status, needle",
    [
        ("/v1/retrieve", {"text": "x", "k": 5}, 422, "max_k=4"),
        ("/v1/retrieve", {"texts": ["x"] * 9}, 422, "max_batch=8"),
        ("/v1/retrieve", {"texts": ["x", "y" * 2001]}, 422, "query 1 in characters is 2001, over the limit max_query_chars=2000"),
        ("/v1/retrieve", {"text": "x", "texts": ["y"]}, 422, "exactly one of 'text' or 'texts'"),
        ("/v1/retrieve", {}, 422, "exactly one of 'text' or 'texts'"),
        ("/v1/retrieve", {"texts": ["ok", ""]}, 422, "empty strings"),
        ("/v1/retrieve", {"text": "x", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ("/v1/retrieve", {"text": "x", "k": "two"}, 422, "k: Input should be a valid integer"),
        ("/v1/retrieve", {"text": 5}, 422, "text: Input should be a valid string"),
        ("/v1/retrieve", {"text": "x", "kk": 2}, 422, "kk: Extra inputs are not permitted"),
        ("/v1/retrieve", [1, 2], 422, "Input should be a valid dictionary"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 41}, 422, "max_new_tokens=40"),
        ("/v1/generate", {"prompt": TOO_MANY_TOKENS, "max_new_tokens": 1}, 422, "max_prompt_tokens=300"),
        ("/v1/generate", {"prompt": "hi", "k": 9}, 422, "max_k=4"),
        ("/v1/generate", {"prompt": ""}, 422, "prompt: String should have at least 1 character"),
        ("/v1/generate", {"prompt": "hi", "temperature": -1}, 422, "temperature"),
        ("/v1/generate", {"prompt": "hi", "top_p": 1.5}, 422, "top_p"),
        ("/v1/generate", {"prompt": "hi", "seed": -3}, 422, "seed"),
        ("/v1/generate", {"max_new_tokens": 3}, 422, "prompt: field required"),
        ("/v1/score", {"text": TOO_MANY_TOKENS}, 422, "max_prompt_tokens=300"),
        ("/v1/score", {"text": "a"}, 422, "scoring needs at least 2"),
        ("/v1/score", {"text": "hello there", "k": 99}, 422, "max_k=4"),
    ],
)
def test_bad_requests_are_4xx_naming_what_was_wrong(api, path, body, status, needle):
    server, *_ = api
    response = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"], response.json()


def test_limit_errors_name_the_limit(api):
    _, client, *_ = api
    with pytest.raises(RetroHTTPError) as err:
        client.retrieve("x", k=5)
    assert (err.value.status_code, err.value.limit) == (422, "max_k")
    assert "max_k=4" in err.value.message and err.value.body["maximum"] == 4


def test_malformed_json_is_400(api):
    server, *_ = api
    response = httpx.post(f"{server.url}/v1/retrieve", content=b'{"text": "x", ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]
    binary = httpx.post(f"{server.url}/v1/generate", content=bytes(range(256)), headers={"Content-Type": "application/json"})
    assert binary.status_code == 400


@pytest.mark.parametrize("path", ["/v1/retrieve", "/v1/generate", "/v1/score"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_json_body_not_sent_as_json_is_415_saying_what_to_send(api, path, content_type):
    """Valid JSON without ``Content-Type: application/json`` (none, or another) is not parsed: 415, not a 422."""
    server, *_ = api
    body = json.dumps({"text": "hello there"}) if path == "/v1/score" else json.dumps({"prompt": "hi"} if path == "/v1/generate" else {"text": "x"})
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(f"{server.url}{path}", content=body.encode(), headers=headers, timeout=30)
    assert response.status_code == 415, response.text
    detail = response.json()["detail"]
    assert "send Content-Type: application/json" in detail
    assert ("no Content-Type" in detail) if content_type is None else (f"got Content-Type: {content_type}" in detail)


def test_json_media_types_with_parameters_or_a_json_suffix_are_accepted(api):
    server, _, _, version = api
    for content_type in ("application/json; charset=utf-8", "application/vnd.retrofresh+json"):
        response = httpx.post(f"{server.url}/v1/retrieve", content=b'{"text": "museum", "k": 1}', headers={"Content-Type": content_type})
        assert response.status_code == 200 and response.json()["index_version"] == version, response.text


def test_oversized_bodies_are_413(api):
    server, *_ = api
    big = json.dumps({"text": "x" * 30_000}).encode()
    declared = httpx.post(f"{server.url}/v1/retrieve", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert declared.json()["limit"] == "max_body_bytes" and "max_body_bytes=20000" in declared.json()["detail"]

    def chunked():  # no Content-Length: the server must count as the body arrives
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = httpx.post(f"{server.url}/v1/retrieve", content=chunked(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["limit"] == "max_body_bytes"
    # httpx refuses to send a bad Content-Length: write the request by hand.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


def test_unknown_routes_and_methods(api):
    server, *_ = api
    assert httpx.get(f"{server.url}/v1/nothing").status_code == 404
    assert httpx.get(f"{server.url}/v1/retrieve").status_code == 405


def test_still_serving_after_bad_input(api):
    _, client, _, version = api
    assert client.healthz()
    assert client.retrieve("museum", k=1).index_version == version


def test_requests_past_max_inflight_get_503_and_slots_free_up(new_labelled_store, server_settings, run_server):
    store = new_labelled_store()  # empty: generation runs without retrieval
    server = run_server(server_settings(store.uri, max_inflight=1, model_workers=1))
    RetroClient(server.url).wait_ready(timeout=60)

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            body = {"prompt": PROMPT, "max_new_tokens": 40, "temperature": 0}
            return await asyncio.gather(*(http.post("/v1/generate", json=body) for _ in range(6)))

    answers = asyncio.run(burst())
    codes = sorted(a.status_code for a in answers)
    assert 200 in codes and 503 in codes, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.json()["limit"] == "max_inflight" and refused.headers["Retry-After"] == "1"
    with RetroClient(server.url) as client:  # the slot is free again once the burst is over
        assert client.generate("hello there", max_new_tokens=2).generated_tokens >= 1

    # A long generation runs in a worker thread: the event loop keeps answering meanwhile.
    admission = server.state.admission
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long = pool.submit(
            RetroClient(server.url, timeout=120).generate, "Once upon a time", max_new_tokens=450, temperature=0, retrieval=False
        )
        wait_for(lambda: admission.inflight == 1, timeout=30, interval=0.005, what="the generation to start")
        with RetroClient(server.url) as client:
            assert client.healthz() and client.ready().ready and client.index().version is None
        assert admission.inflight == 1 and not long.done(), "answered only after the generation finished"
        assert long.result().generated_tokens >= 1
