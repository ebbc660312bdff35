"""Replicas on one store: `retrofresh serve` processes watching one gs:// store (fake-gcs-server).

Two real server processes watch the same bucket. A refresh flow given both (and one replica that
is down) publishes, notifies them all and says which one lags; then versions published one after
another reach every replica within a bounded time, and no replica ever answers from a version
older than one it already answered from.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import yaml
from click.testing import CliRunner

from model.client import RetroClient
from tests.fixtures.server import ADMIN_TOKEN, LabelledStore, ServeProcess, label_of, start_serve_process
from tests.flows.support import artifacts_of, dead_url, flow_run_id, write_sources

# Three server processes' worth of start-up (two replicas, the Prefect API) plus an ingest: ~1.5 min
# on a quiet 2-core box, but more than the suite's 600 s limit when the box is shared and saturated.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

REPLICAS = 2
PAGES = 6  # pages of the sample site the refresh crawls
RELOAD_INTERVAL_S = 0.5
# A replica must serve a new version this soon after CURRENT names it: its check interval plus
# download, sha256 verification and warm-up of a small version (about a second here), with a wide
# margin for a shared 2-core box under heavy load.
CONVERGENCE_BOUND_S = 60.0


@dataclass
class Replicas:
    store_uri: str
    servers: list[ServeProcess]
    store: LabelledStore

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]


@pytest.fixture(scope="module")
def replicas(gcs_emulator, tiny_checkpoint, query_embedder, tmp_path_factory):
    """Two `retrofresh serve` processes over one empty gs:// store; stopped after the module."""
    from google.cloud import storage

    from model.contracts.tokenizer import RetroTokenizer

    root = tmp_path_factory.mktemp("replicas")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
        bucket = storage.Client(project="retrofresh-test").create_bucket(f"replicas-{root.name}".lower().replace("_", "-"))
        uri = f"gs://{bucket.name}/index"
        servers = [
            start_serve_process(
                tiny_checkpoint, uri, root / f"replica-{i}", reload_interval_s=RELOAD_INTERVAL_S,
                env={"STORAGE_EMULATOR_HOST": gcs_emulator, "RETROFRESH_ADMIN_TOKEN": ADMIN_TOKEN},
            )
            for i in range(REPLICAS)
        ]  # fmt: skip
        try:
            for server in servers:
                server.wait_ready()  # the store has no version yet: ready, retrieval off
            writer = LabelledStore(uri, query_embedder, RetroTokenizer.load(), root / "writer-cache")
            yield Replicas(uri, servers, writer)
        finally:
            for server in servers:
                server.interrupt()  # all at once: each takes a moment to drain
            for server in servers:
                server.stop()
            for blob in bucket.client.list_blobs(bucket.name):
                blob.delete()
            bucket.delete()


def serving(url: str) -> str | None:
    return httpx.get(f"{url}/v1/index", timeout=10).json()["version"]


def test_a_refresh_notifies_every_replica_and_names_the_one_that_lags(replicas, prefect_api, monkeypatch, tmp_path):
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from flows.refresh import refresh_corpus

    monkeypatch.setenv("RETROFRESH_ADMIN_TOKEN", ADMIN_TOKEN)
    down = dead_url()  # a replica that is down during the refresh
    site = SampleSiteServer(SampleWorld(0, 1), 0).start()
    try:
        sources = write_sources(tmp_path / "sources.yaml", site.base_url)
        # A few pages are enough to publish a version; fewer chunks to embed keeps the test light.
        config = yaml.safe_load(sources.read_text())
        config["sources"][0]["max_pages"] = PAGES
        sources.write_text(yaml.safe_dump(config))
        state = refresh_corpus(sources=str(sources), store=replicas.store_uri, servers=[*replicas.urls, down], return_state=True)
    finally:
        site.stop()
    assert state.is_completed(), state.message
    summary = state.result()
    version = summary["version"]
    assert summary["published"] and replicas.store.store.current() == version

    by_url = {n["url"]: n for n in summary["notified"]}
    assert list(by_url) == [*replicas.urls, down]
    for url in replicas.urls:
        assert by_url[url]["ok"] and by_url[url]["index_version"] == version, by_url[url]
        assert serving(url) == version  # the reload answered once the version was swapped in
    assert not by_url[down]["ok"] and "RetroConnectionError" in by_url[down]["detail"]

    report = artifacts_of(flow_run_id(state))["refresh-summary"].data
    assert f"**1 of {REPLICAS + 1} servers did not reload** ({down})" in report
    assert f"| {down} | no |" in report


@dataclass
class Observer:
    """Asks one replica to retrieve, again and again, and keeps every answer's version and labels."""

    url: str
    seen: list[tuple[float, str | None, set[str]]] = field(default_factory=list)  # (when, version, labels)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/v1/retrieve", json={"text": "who is the mayor of the river town now?", "k": 2})
                except httpx.HTTPError as exc:  # kept and reported: the thread must not die silently
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code} {response.text}")
                else:
                    body = response.json()
                    labels = {label_of(n["url"]) for n in body["results"][0]}
                    self.seen.append((time.monotonic(), body["index_version"], labels))
                self.stop.wait(0.03)

    def first_seen(self, version: str) -> float | None:
        return next((when for when, seen, _ in self.seen if seen == version), None)


def test_replicas_converge_to_each_new_version_and_never_go_back(replicas):
    observers = [Observer(url) for url in replicas.urls]
    threads = [threading.Thread(target=o.run, daemon=True) for o in observers]
    for thread in threads:
        thread.start()
    order = {replicas.store.store.current(): 0}  # whatever the store held before: the oldest
    convergence: list[list[float]] = []
    try:
        for label in ("B", "C", "D", "E"):
            version = replicas.store.publish(label)
            published_at = time.monotonic()  # publish returns right after CURRENT is replaced
            order[version] = len(order)
            if label == "D":
                continue  # E follows at once: a replica may skip D, but must never serve D after E
            deadline = published_at + CONVERGENCE_BOUND_S
            while not all(o.first_seen(version) for o in observers):
                assert time.monotonic() < deadline, (
                    f"{version} did not reach every replica within {CONVERGENCE_BOUND_S}s: "
                    f"{[(o.url, o.seen[-1][1] if o.seen else 'no answer yet', o.errors[-3:]) for o in observers]}"
                )
                time.sleep(0.02)
            convergence.append([round(o.first_seen(version) - published_at, 3) for o in observers])
    finally:
        for o in observers:
            o.stop.set()
        for thread in threads:
            thread.join(15)
    print(f"seconds from CURRENT to each replica's first answer (reload interval {RELOAD_INTERVAL_S}s): {convergence}")

    for o in observers:
        assert not o.errors, (o.url, o.errors[:3])
        ranks = [order.get(version, -1) for _, version, _ in o.seen]
        assert ranks == sorted(ranks), f"{o.url} served an older version after a newer one: {[v for _, v, _ in o.seen]}"
        for _, version, labels in o.seen:
            if version in replicas.store.labels:  # every neighbour came from the version the answer names
                assert labels == {replicas.store.labels[version]}, (version, labels)
        assert o.seen[-1][1] == version


def test_the_client_and_query_fail_over_between_real_replicas(replicas):
    from flows.cli import cli

    down = dead_url()
    with RetroClient([down, *replicas.urls], retries=0) as client:
        answer = client.retrieve("the price of bread at the market", k=1)
        assert client.url == replicas.urls[0] and answer.index_version == serving(replicas.urls[0])
    out = CliRunner().invoke(cli, ["query", "the mayor", "--url", down, "--url", replicas.urls[1], "--retrieve-only", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["index_version"] == serving(replicas.urls[1])
