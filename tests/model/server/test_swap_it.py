"""Hot swap under live traffic: new versions, a rollback, refused versions, a restart, a GCS store."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from model.client import RetroClient
from tests.fixtures.server import ADMIN_TOKEN, LabelledStore, label_of
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

PROMPT = "In this edition, the mayor of the river town changed, and the harbour master too. " * 5


class Traffic:
    """Client threads calling every model endpoint in a loop, recording what each answer says."""

    def __init__(self, url: str, threads: int = 4):
        self.url = url
        self.stop = threading.Event()
        self.records: list[tuple[str, str | None, set[str]]] = []  # (endpoint, index_version, neighbour labels)
        self.failures: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def count(self, version: str) -> int:
        return sum(1 for _, v, _ in list(self.records) if v == version)

    def _run(self, worker: int) -> None:
        # retries=0: a connection error must show up as a failure, not be papered over.
        with RetroClient(self.url, timeout=30, retries=0) as client:
            n = 0
            while not self.stop.is_set():
                kind = ("retrieve", "batch", "generate", "score")[(worker + n) % 4]
                try:
                    if kind == "retrieve":
                        answer = client.retrieve(f"who is the mayor now? ({n})", k=2)
                        version, rows = answer.index_version, answer.results
                    elif kind == "batch":
                        answer = client.retrieve(["the harbour master", "the museum director", "bread prices"], k=3)
                        version, rows = answer.index_version, answer.results
                    elif kind == "generate":
                        answer = client.generate(PROMPT, max_new_tokens=3, seed=n)
                        version, rows = answer.index_version, answer.neighbours
                    else:
                        answer = client.score(PROMPT)
                        version, rows = answer.index_version, []
                    if version is None:
                        raise AssertionError(f"{kind} answered without an index version")
                    self.records.append((kind, version, {label_of(n.url) for row in rows for n in row}))
                except Exception as exc:  # every failure is recorded and fails the test
                    self.failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                n += 1


def test_versions_swap_under_load_with_no_failed_request(labelled_store: LabelledStore, server_settings, run_server):
    store = labelled_store
    a = store.publish("A")
    server = run_server(server_settings(store.uri, reload_interval_s=0.2))
    client = RetroClient(server.url)
    client.wait_ready(timeout=60)
    holder = server.state.holder
    served = [holder.current]

    def serve_next(version: str) -> None:
        wait_for(lambda: client.index().version == version, timeout=30, what=f"the server to swap in {version}")
        served.append(holder.current)
        wait_for(lambda: traffic.count(version) >= 4, timeout=60, what=f"answers from {version}")

    with Traffic(server.url) as traffic:
        wait_for(lambda: traffic.count(a) >= 4, timeout=60, what="answers from A")
        b = store.publish("B")
        serve_next(b)
        c = store.publish("C")
        serve_next(c)
        store.rollback(b)
        serve_next(b)
        d = store.publish("D")
        serve_next(d)

    assert traffic.failures == []
    wrong = [(kind, version, labels) for kind, version, labels in traffic.records if labels - {store.labels[version]}]
    assert wrong == [], f"{len(wrong)} answers carried neighbours of another version than the one they report"
    assert {v for _, v, _ in traffic.records} == {a, b, c, d}
    assert all(labels for kind, _, labels in traffic.records if kind != "score")
    info = client.index()
    assert info.version == d == store.store.current()
    assert info.swaps == 5 and info.last_error is None
    assert "retrofresh_index_swaps_total 5.0" in client.metrics()
    # Every version swapped out was closed once its last request ended; the served one is open and idle.
    assert [v.version for v in served] == [a, b, c, b, d]
    assert all(v.closed for v in served[:-1]) and not served[-1].closed
    assert served[-1].refs == 0


def test_bad_versions_are_refused_while_the_old_one_serves(labelled_store: LabelledStore, server_settings, run_server):
    store = labelled_store
    a = store.publish("A")
    # No periodic checks: each check below is the one /admin/reload triggers, so the damage is
    # always done before the server looks at the version.
    server = run_server(server_settings(store.uri, reload_interval_s=3600))
    client = RetroClient(server.url, admin_token=ADMIN_TOKEN)
    client.wait_ready(timeout=60)

    damaged = store.publish("E")
    store.damage(damaged)
    answer = client.reload()
    assert (answer.current, answer.version, answer.swapped) == (damaged, a, False)
    assert answer.error.kind == "checksum" and answer.error.version == damaged and "corrupt" in answer.error.error
    assert client.index().last_error.version == damaged
    hits = client.retrieve("the mayor", k=2)
    assert hits.index_version == a and {label_of(n.url) for n in hits.results[0]} == {"A"}
    assert client.ready().ready

    other = dataclasses.replace(store.embedder.spec, name="another-encoder", sha256="0" * 64)
    foreign = store.publish("F", embedder_spec=other, rebuild=True)
    answer = client.reload()
    assert (answer.current, answer.version, answer.swapped) == (foreign, a, False)
    assert answer.error.kind == "incompatible" and "another-encoder" in answer.error.error
    info = client.index()
    assert info.version == a and info.last_error.version == foreign
    assert client.generate(PROMPT, max_new_tokens=2).index_version == a

    metrics = client.metrics()
    assert 'retrofresh_index_swap_failures_total{kind="checksum"} 1.0' in metrics
    assert 'retrofresh_index_swap_failures_total{kind="incompatible"} 1.0' in metrics

    good = store.publish("G", rebuild=True)
    answer = client.reload()
    assert (answer.current, answer.version, answer.swapped, answer.error) == (good, good, True, None)
    hits = client.retrieve("the mayor", k=2)
    assert hits.index_version == good and {label_of(n.url) for n in hits.results[0]} == {"G"}
    assert client.index().last_error.version == foreign  # the last refusal stays on record


def test_a_restarted_server_comes_up_on_current(labelled_store: LabelledStore, server_settings, run_server):
    store = labelled_store
    a = store.publish("A")
    settings = server_settings(store.uri, reload_interval_s=3600)
    first = run_server(settings)
    assert RetroClient(first.url).wait_ready(timeout=60).index_version == a
    first.stop()
    b = store.publish("B")
    second = run_server(settings.model_copy(update={"port": settings.port}))  # same port and cache
    ready = RetroClient(second.url).wait_ready(timeout=60)
    assert ready.index_version == b == store.store.current()


def test_swaps_from_a_gcs_store(gcs_bucket, query_embedder, tmp_path, server_settings, run_server):
    from model.contracts.tokenizer import RetroTokenizer

    store = LabelledStore(f"gs://{gcs_bucket}/store", query_embedder, RetroTokenizer.load(), tmp_path / "writer-cache")
    a = store.publish("A")
    server = run_server(server_settings(store.uri, reload_interval_s=0.2))
    client = RetroClient(server.url)
    assert client.wait_ready(timeout=60).index_version == a
    b = store.publish("B")
    wait_for(lambda: client.index().version == b, timeout=30, what="the swap to B")
    hits = client.retrieve("the harbour master", k=2)
    assert hits.index_version == b and {label_of(n.url) for n in hits.results[0]} == {"B"}
    cached = list((server.state.settings.cache_dir).rglob("index.faiss"))
    assert cached, "shards of a GCS store are served from the local cache"
