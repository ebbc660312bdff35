"""Hot swap under load: N concurrent clients for T seconds while K index versions are published.

Runs ``retrofresh serve`` as a separate process (so the load generator does not share its GIL),
publishes prepared versions on a schedule, and measures every request. A request "overlaps a
swap" when it was in flight while the server was loading, verifying, warming or swapping a
version (the window ``[loaded_at - load_seconds, loaded_at]`` that ``/v1/index`` reports).

    python -m bench.swap [--quick] [--json]

Writes bench/results/swap.json and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench.common import RESULTS, machine, serve, stop, write_result
from model.contracts.clock import utcnow

# knobs
CLIENTS = 8  # concurrent client loops
DURATION_S = 30.0  # measured traffic, after warm-up
WARMUP_S = 3.0  # traffic before measuring (connections, first batches)
VERSIONS = 4  # versions published during the measured traffic
CHUNKS_PER_VERSION = 10_000  # each version is a full rebuild of this many chunks
REAL_DOCS_PER_VERSION = 30  # documents actually embedded; the rest are perturbed copies of their keys
K = 2  # neighbours per query
RELOAD_INTERVAL_S = 0.5  # how often the server checks CURRENT
STEADY_MARGIN_S = 0.5  # requests this close to a swap window count neither as steady nor as overlapping
QUICK = dict(CLIENTS=4, DURATION_S=10.0, WARMUP_S=2.0, VERSIONS=2, CHUNKS_PER_VERSION=2_000, REAL_DOCS_PER_VERSION=10)

RESULT = RESULTS / "swap.json"
QUERIES = [
    "who is the harbour master of the old port now?",
    "what does bread cost at the market?",
    "who won the spring regatta?",
    "when does the public library open?",
    "who directs the city museum?",
    "who is the mayor of the river town?",
]


@dataclass
class Sample:
    start: float  # wall clock, seconds since the epoch (the server's loaded_at uses the same clock)
    end: float
    ok: bool
    version: str | None = None
    right_version: bool = True


# preparing the checkpoint and the versions


def report_text(label: str, i: int) -> str:
    """Document ``i`` of version ``label``: one of the queries, and an answer only that version has."""
    return f"Edition {label}, report {i}: {QUERIES[i % len(QUERIES)]} In edition {label} the answer is item {label}-{i}. " * 4


def prepare(root: Path, labels: list[str], knobs: dict, store_uri: str | None = None, *,
            document: Callable[[str, int], str] = report_text):
    """A tiny random checkpoint, and one shard per label written ahead (publishing is then cheap).

    Shared by the serving benchmarks (bench.swap, bench.soak, bench.replicas).

    Args:
        root: the run's folder (``checkpoint/``, ``store/``, ``writer-cache/``).
        labels: one version per label.
        knobs: ``REAL_DOCS_PER_VERSION`` (documents embedded for real) and ``CHUNKS_PER_VERSION``
            (padded with noisy copies of their chunks).
        store_uri: another store than ``root/store`` (bench.replicas: a gs:// one).
        document: the text of document ``i`` of a version.
    """
    import torch

    from model.contracts.chunking import Chunk, chunk_document
    from model.contracts.embedder import Embedder
    from model.contracts.ids import chunk_id, content_hash, doc_id
    from model.contracts.tokenizer import RetroTokenizer
    from model.network.config import RetroConfig
    from model.network.retro import Retro
    from model.store import open_store

    embedder = Embedder()
    tokenizer = RetroTokenizer.load()
    torch.manual_seed(0)
    config = RetroConfig.preset("tiny", vocab_size=tokenizer.vocab_size, embedder=embedder.spec.to_dict())
    Retro(config).save_pretrained(root / "checkpoint", tokenizer=tokenizer)
    store = open_store(store_uri or root / "store", cache_dir=root / "writer-cache")
    rng = np.random.default_rng(0)
    shards = {}
    for label in labels:
        chunks: list[Chunk] = []
        for i in range(knobs["REAL_DOCS_PER_VERSION"]):
            url = f"https://v-{label.lower()}.example.test/doc-{i}"
            text = document(label, i)
            chunks += chunk_document(tokenizer.encode(text), doc_id=doc_id(url), url=url, content_hash=content_hash(text), tokenizer=tokenizer)
        base = embedder.encode([c.text for c in chunks])
        copies, vectors = [], [base]
        for j in range(len(chunks), knobs["CHUNKS_PER_VERSION"]):
            src = chunks[j % len(chunks)]
            copies.append(Chunk(chunk_id(src.doc_id, 10_000 + j, label), src.doc_id, 10_000 + j, src.tokens, src.continuation, src.text, src.url))
        if copies:
            noisy = base[np.arange(len(copies)) % len(base)] + 0.05 * rng.standard_normal((len(copies), base.shape[1])).astype(np.float32)
            vectors.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        shards[label] = store.write_shard(chunks + copies, np.vstack(vectors).astype(np.float32), embedder=embedder.spec)
        print(f"prepared version {label}: {len(chunks) + len(copies)} chunks", file=sys.stderr)
    return store, embedder.spec, tokenizer, shards


def publish(store, spec, tokenizer, shard, label: str, *, source: str = "bench") -> str:
    """Publish a version made of one prepared shard (``sources``: ``<source>-<label>``); its id."""
    from model.store import Manifest

    current = store.current()
    manifest = Manifest.next(
        None,
        version=store.new_version_id(),
        embedder=spec,
        tokenizer={"name": tokenizer.name, "sha256": tokenizer.sha256},
        add_shards=[shard],
        tombstones=[],
        ledger=None,
        documents=shard.count,
        watermark=utcnow(),
        sources=[f"{source}-{label}"],
    )
    store.publish(manifest, expected_current=current, check_parent=False)
    return manifest.version


# traffic


async def client_loop(client, stop: asyncio.Event, samples: list[Sample], labels: dict[str, str], worker: int) -> None:
    from model.client import RetroError

    n = 0
    while not stop.is_set():
        query = QUERIES[(worker + n) % len(QUERIES)]
        start = time.time()
        try:
            answer = await client.retrieve(query, k=K)
            label = labels.get(answer.index_version)
            right = label is not None and all(f"//v-{label.lower()}." in hit.url for hit in answer.results[0])
            samples.append(Sample(start, time.time(), True, answer.index_version, right))
        except RetroError:
            samples.append(Sample(start, time.time(), False))
        n += 1


async def watch_swaps(client, stop: asyncio.Event, swaps: dict[str, tuple[float, float]]) -> None:
    """Record each version's load window ``(start, end)`` as the server reports it."""
    while not stop.is_set():
        info = await client.index()
        if info.version and info.version not in swaps and info.loaded_at and info.load_seconds is not None:
            end = info.loaded_at.timestamp()
            swaps[info.version] = (end - info.load_seconds, end)
        await asyncio.sleep(0.05)


async def drive(url: str, store, spec, tokenizer, shards, labels_order: list[str], labels: dict[str, str], knobs: dict):
    from model.client import AsyncRetroClient

    samples: list[Sample] = []
    swaps: dict[str, tuple[float, float]] = {}
    stop = asyncio.Event()
    async with AsyncRetroClient(url, timeout=30, retries=0, max_connections=knobs["CLIENTS"] + 2) as client:
        tasks = [asyncio.create_task(client_loop(client, stop, samples, labels, i)) for i in range(knobs["CLIENTS"])]
        watcher = asyncio.create_task(watch_swaps(client, stop, swaps))
        await asyncio.sleep(knobs["WARMUP_S"])
        measured_from = time.time()
        spacing = knobs["DURATION_S"] / (knobs["VERSIONS"] + 1)
        published = []
        for i, label in enumerate(labels_order[1:], 1):
            await asyncio.sleep(max(0.0, measured_from + i * spacing - time.time()))
            version = await asyncio.to_thread(publish, store, spec, tokenizer, shards[label], label)
            labels[version] = label
            published.append(version)
        await asyncio.sleep(max(0.0, measured_from + knobs["DURATION_S"] - time.time()))
        measured_to = time.time()
        stop.set()
        await asyncio.gather(*tasks, watcher)
    return samples, swaps, published, measured_from, measured_to


def p99(values: list[float]) -> float | None:
    return float(np.percentile(values, 99)) if values else None


def summarise(samples, swaps, published, measured_from, measured_to, knobs) -> dict:
    measured = [s for s in samples if measured_from <= s.start < measured_to]
    windows = [swaps[v] for v in published if v in swaps]

    def overlaps(s: Sample, margin: float) -> bool:
        return any(s.start <= end + margin and s.end >= start - margin for start, end in windows)

    ok = [s for s in measured if s.ok]
    during = [s.end - s.start for s in ok if overlaps(s, 0.0)]
    steady = [s.end - s.start for s in ok if not overlaps(s, STEADY_MARGIN_S)]
    p99_during, p99_steady = p99(during), p99(steady)
    seconds = measured_to - measured_from
    return {
        "requests": len(measured),
        "failed_requests": sum(1 for s in measured if not s.ok),
        "swaps": len(windows),
        "p99_ratio_during_swap": round(p99_during / p99_steady, 3) if p99_during and p99_steady else None,
        "retrieve_qps": round(len(ok) / seconds, 1),
        "wrong_version_neighbours": sum(1 for s in ok if not s.right_version),
        "versions_published": len(published),
        "requests_during_swap": len(during),
        "p50_steady_ms": round(float(np.percentile(steady, 50)) * 1000, 2) if steady else None,
        "p99_steady_ms": round(p99_steady * 1000, 2) if p99_steady else None,
        "p99_during_swap_ms": round(p99_during * 1000, 2) if p99_during else None,
        "load_seconds": [round(end - start, 3) for start, end in windows],
        "knobs": {**knobs, "K": K, "RELOAD_INTERVAL_S": RELOAD_INTERVAL_S},
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run with small versions")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    knobs = dict(CLIENTS=CLIENTS, DURATION_S=DURATION_S, WARMUP_S=WARMUP_S, VERSIONS=VERSIONS,
                 CHUNKS_PER_VERSION=CHUNKS_PER_VERSION, REAL_DOCS_PER_VERSION=REAL_DOCS_PER_VERSION)
    if args.quick:
        knobs.update(QUICK)
    labels_order = [chr(ord("A") + i) for i in range(knobs["VERSIONS"] + 1)]

    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        root = Path(tmp)
        store, spec, tokenizer, shards = prepare(root, labels_order, knobs)
        labels = {publish(store, spec, tokenizer, shards["A"], "A"): "A"}
        server, url = serve(root / "checkpoint", root / "store", root / "server-cache", reload_interval=RELOAD_INTERVAL_S,
                            env={**os.environ, "RETROFRESH_MAX_INFLIGHT": str(knobs["CLIENTS"] * 4)})
        try:
            from model.client import RetroClient

            with RetroClient(url, retries=0) as client:
                client.wait_ready(timeout=180)
            result = summarise(*asyncio.run(drive(url, store, spec, tokenizer, shards, labels_order, labels, knobs)), knobs)
        finally:
            stop(server)

    write_result(RESULT, result, as_json=args.json,
                 summary=f"{result['requests']} requests, {result['failed_requests']} failed, {result['swaps']} swaps, "
                         f"p99 during swap / steady = {result['p99_ratio_during_swap']}, {result['retrieve_qps']} retrieve/s")


if __name__ == "__main__":
    main()
