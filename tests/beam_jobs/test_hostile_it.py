"""One real pipeline run over a hostile site: every bad input ends as a counted outcome and the job
completes with a draft holding the good documents."""

from __future__ import annotations

import time

import pytest

from beam_jobs.ingest import run_ingest
from beam_jobs.sources import SourcesConfig
from model.store import open_store
from tests.beam_jobs.hostile import LATIN1_TEXT, METADATA_URL, PRIVATE_URLS, HostileSite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    store_uri = str(tmp_path_factory.mktemp("hostile") / "store")
    with HostileSite(stall_s=3) as site:
        config = SourcesConfig.model_validate(
            {
                "fetch": {"crawl_delay_s": 0, "timeout_s": 0.5, "deadline_s": 3, "retries": 1, "backoff_s": 0.01, "max_bytes": 1_000_000},
                "sources": [
                    {
                        "kind": "site",
                        "name": "hostile",
                        "start_urls": [site.base_url + "/", METADATA_URL],
                        "allowed_hosts": ["127.0.0.1", "169.254.169.254"],
                        "use_sitemaps": False,
                        "allow_networks": ["127.0.0.0/8"],
                    }
                ],
            }
        )
        started = time.monotonic()
        result = run_ingest(config, store_uri)
        elapsed = time.monotonic() - started
        yield result, site.paths(), store_uri, site.base_url, elapsed


def test_each_hostile_input_is_a_counted_outcome(hostile_run):
    result, _, _, _, _ = hostile_run
    m = result.metrics
    assert m["failed_binary"] == 1  # random bytes served as text/html
    assert m["failed_too_large"] == 2  # 50 MB declared, and 50 MB streamed without a length
    assert m["failed_redirect_loop"] == 1
    assert m["failed_timeout"] == 1  # the stalling page
    # a link to 169.254.169.254, a redirect to it, and one redirect to 10.0.0.1 per spelling of it
    assert m["failed_blocked_address"] == 2 + len(PRIVATE_URLS)
    assert m["failed_content_type"] == 1  # image/png
    assert m["robots_blocked"] == 1 and m["gone"] == 1
    assert m["failed"] == sum(v for k, v in m.items() if k.startswith("failed_"))
    assert m["retries"] >= 2  # the 500-then-200 page and the stall


def test_the_job_completes_with_the_good_documents(hostile_run):
    result, _, store_uri, base, elapsed = hostile_run
    urls = {row["url"] for row in open_store(store_uri).read_ledger(result.version).to_pylist()}
    # the index, a plain page, malformed HTML, the 500-then-200 page, Latin-1 text, the ETag page
    expected = {base + p for p in ("/", "/ok.html", "/malformed.html", "/flaky.html", "/latin1.txt", "/etag.html")}
    assert urls == expected and result.metrics["new"] == len(expected)
    assert elapsed < 60


def test_non_utf8_text_is_decoded_not_mangled(hostile_run):
    result, _, store_uri, _, _ = hostile_run
    with open_store(store_uri).open(result.version) as view:
        rows = sorted((row for batch in view.iter_chunks() for row in batch.to_pylist()), key=lambda r: (r["doc_id"], r["position"]))
    text = "".join(row["text"] for row in rows)
    assert "café" in text and "crème brûlée" in text and "Zoë" in text
    assert LATIN1_TEXT.split(",")[0] in text.replace("\n", " ")


def test_disallowed_and_refused_urls_were_never_requested(hostile_run):
    _, paths, _, _, _ = hostile_run
    assert "/secret/plans.html" not in paths
    assert paths.count("/stall.html") == 2 and paths.count("/flaky.html") == 2
