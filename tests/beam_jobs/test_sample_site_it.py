"""The sample site server: validators and 304s, errors, edition switching, the request log; and
``retrofresh site serve`` as a real process."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from beam_jobs.sample.world import BROKEN_PATH, PDF_PATH
from model.server.ports import free_port

pytestmark = pytest.mark.integration


def test_pages_carry_validators_and_answer_conditional_requests(sample_site):
    site = sample_site(0)
    with httpx.Client(base_url=site.base_url) as client:
        first = client.get("/")
        assert first.status_code == 200 and first.headers["etag"] and first.headers["last-modified"]
        assert client.get("/", headers={"If-None-Match": first.headers["etag"]}).status_code == 304
        assert client.get("/", headers={"If-Modified-Since": first.headers["last-modified"]}).status_code == 304
        assert client.get("/", headers={"If-None-Match": '"stale"'}).status_code == 200
        assert client.head("/cities/").status_code == 200
        assert client.get("/nowhere.html").status_code == 404
        assert client.get(BROKEN_PATH).status_code == 500
        assert client.get(PDF_PATH).headers["content-type"] == "application/pdf"
        assert "Disallow: /private/" in client.get("/robots.txt").text
        assert site.base_url + "/" in client.get("/sitemap.xml").text
    assert [r.path for r in site.requests][:3] == ["/", "/", "/"]
    assert site.requested("/")[1].status == 304


def test_switching_editions_changes_what_is_served(sample_site):
    site = sample_site(0)
    change = site.world.changed_facts(1)[0]
    path = next(p for p in change.paths if not p.startswith("/news/"))
    with httpx.Client(base_url=site.base_url) as client:
        assert change.old_sentence in client.get(path).text
        site.set_edition(1)
        assert change.sentence in client.get(path).text


def test_cli_serves_an_edition(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "site", "serve", "--edition", "1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read().decode() if proc.poll() is not None else "no answer in 30 s")
                time.sleep(0.1)
        assert response.status_code == 200 and "edition 1 of" in response.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
