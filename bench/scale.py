"""Serving at scale: open, memory, latency, swap and recall of a large store, through the real server.

    python -m bench.scale [--quick] [--json] [--sizes N ...]

For each size, a synthetic store is built through the store's own writer (``train_lineage``,
``write_shard``, ``Manifest.next``) as a chain of versions: a base of BASE_SHARDS IVF shards, then
DELTAS delta versions that each add DELTA of the size as a new shard and tombstone TOMBSTONED of
it (changed documents). Keys are clustered (topics in low-dimensional subspaces plus noise, like
sentence embeddings; never uniform), rows have real sizes (64 + 64 tokens, ~300 bytes of text, a
URL). The base version is tuned as a refresh's validation tunes it (``store.tune``, recall@2 >=
0.95) and the deltas inherit its ``search``.

``retrofresh serve`` runs as a separate process on the store before anything is published, and
the versions are published one by one while it runs:

- ``open_s``: the server's load time of the base version (verify, map, warm), from ``/v1/index``;
- ``rss_anon_mb``: the serving process's anonymous memory (``RssAnon`` in /proc) with the last
  version loaded, and ``rss_anon_per_m_chunks_mb``: that minus the process before any version was
  loaded (model, embedder, Python), per million live chunks;
- ``retrieve_p50_ms`` / ``retrieve_p99_ms``: ``POST /v1/retrieve`` at k=2, one request at a time
  (embedding the query text included), at the query precision ``auto`` picks on this machine
  (``auto_precision``), and ``search_p50_ms``: the index search alone, in-process;
- ``retrieve_ms_by_precision``: p50 and p99 of two servers side by side, one embedding queries in
  fp32 and one under bf16 autocast (``retrofresh serve --precision``), requests alternating between
  them so a change of load hits both alike; ``embed_query_p50_ms_by_precision``: the query's
  embedding alone, in-process, at each precision (the larger part of a retrieve);
- ``swap_s``: the server's load time of the last 1% delta version, and ``swap_extra_mb``: the
  peak rise of the server's ``RssAnon`` while it swapped (sampled every 10 ms);
- ``recall_at_2``: of the served version's search against exact search over the live float keys
  (streamed while they are generated), on QUERIES fresh clustered queries.

Writes bench/results/scale.json; ``--json`` prints one object with ``results``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import machine, serve, stop, wait_ready, write_result
from model.contracts.clock import utcnow

# knobs
FULL_SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (1_000_000,)
DIM = 384  # all-MiniLM-L6-v2's width: the server's embedder must match the store's
BASE_SHARDS = 4  # IVF shards the base version is written as
DELTAS = 2  # delta versions published after the base; the last one's swap is measured
DELTA = 0.01  # chunks each delta adds, as a share of the size
TOMBSTONED = 0.005  # chunks each delta tombstones, as a share of the size
BLOCK = 125_000  # keys generated (and streamed through exact search) at a time
PER_TOPIC = 2000  # keys per topic (cluster)
LATENT = 16  # dimensions of a topic's subspace
NOISE = 0.45  # isotropic noise per dimension
QUERIES = 500  # fresh clustered queries for recall@2
K = 2
REQUESTS = 400  # measured /v1/retrieve requests (after WARMUP)
WARMUP = 20
TEXT_BYTES = 300  # bytes of text per chunk row (64 tokens of English text)
RECALL_TARGET = 0.95
NLIST = None  # IVF lists of the lineage; None: the store's policy (a power of two near 4·sqrt(n))
SEED = 0
RESULTS = Path(__file__).parent / "results" / "scale.json"

LOG = logging.getLogger("bench.scale")
QUERY_TEXTS = [
    "who is the harbour master of the old port now?", "what does bread cost at the market?",
    "who won the spring regatta?", "when does the public library open?", "who directs the city museum?",
    "the history of the river town and its bridges", "a new product was announced on Monday",
]


# the synthetic corpus


class Topics:
    """Clustered unit keys: a topic centre, plus a point of the topic's subspace, plus noise."""

    def __init__(self, n: int, rng: np.random.Generator):
        topics = max(8, n // PER_TOPIC)
        self.centres = rng.standard_normal((topics, DIM), dtype=np.float32)
        self.bases = rng.standard_normal((topics, LATENT, DIM), dtype=np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        topics = rng.integers(len(self.centres), size=n)
        out = self.centres[topics]
        z = rng.standard_normal((n, LATENT), dtype=np.float32)
        order = np.argsort(topics, kind="stable")
        bounds = np.searchsorted(topics[order], np.arange(len(self.centres) + 1))
        for t in range(len(self.centres)):  # topic by topic: never a (n, LATENT, DIM) temporary
            rows = order[bounds[t] : bounds[t + 1]]
            if len(rows):
                out[rows] += (0.6 / np.sqrt(LATENT)) * (z[rows] @ self.bases[t])
        out += NOISE * rng.standard_normal((n, DIM), dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def chunk_rows(ids: np.ndarray, rng: np.random.Generator):
    """Rows of real size for synthetic chunks, built from numpy buffers (no Python per row)."""
    import pyarrow as pa

    from model.store import CHUNKS_SCHEMA

    n = len(ids)

    def tokens() -> pa.Array:
        values = pa.array(rng.integers(0, 8192, size=n * 64, dtype=np.int32))
        return pa.ListArray.from_arrays(pa.array(np.arange(0, n * 64 + 1, 64, dtype=np.int32)), values)

    def strings(width: int, alphabet: bytes) -> pa.Array:
        letters = np.frombuffer(alphabet, np.uint8)[rng.integers(0, len(alphabet), size=n * width, dtype=np.uint8)]
        offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)).buffers()[1]
        return pa.StringArray.from_buffers(n, offsets, pa.py_buffer(letters.tobytes()))

    import pyarrow.compute as pc

    docs = pa.array(ids // 8).cast(pa.string())  # eight chunks a document
    return pa.table(
        {
            "chunk_id": ids,
            "doc_id": docs,
            "position": (ids % 8).astype(np.int32),
            "tokens": tokens(),
            "continuation": tokens(),
            "text": strings(TEXT_BYTES, b"abcdefghijklmnopqrstuvwxyz     "),
            "url": pc.binary_join_element_wise("https://example.test/doc", docs, "/"),
        },
        schema=CHUNKS_SCHEMA,
    )


class ExactTopK:
    """Exact top-k of fixed queries over keys that arrive block by block (live keys only)."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), k), -np.inf, np.float32)
        self.ids = np.full((len(queries), k), -1, np.int64)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        if not len(ids):
            return
        scores = self.queries @ keys.T  # (q, block)
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        both_s = np.hstack([self.scores, np.take_along_axis(scores, top, 1)])
        both_i = np.hstack([self.ids, ids[top]])
        order = np.argsort(-both_s, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(both_s, order, 1), np.take_along_axis(both_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def build_store(root: Path, n: int, spec, tokenizer, nlist: int | None = NLIST) -> dict:
    """Write the base and the deltas as drafts (nothing published); returns what was written."""
    from model.store import IndexPolicy, Manifest, open_store

    rng = np.random.default_rng(SEED)
    topics = Topics(n, rng)
    queries = topics.sample(QUERIES, rng)
    delta_n, tomb_n = int(n * DELTA), int(n * TOMBSTONED)
    base_ids = np.sort(rng.choice(2**62, size=n, replace=False).astype(np.int64))
    rng.shuffle(base_ids)
    delta_ids = [rng.choice(2**62, size=delta_n, replace=False).astype(np.int64) for _ in range(DELTAS)]
    # Each delta tombstones other base chunks (their documents changed).
    tombstones = np.array_split(base_ids[rng.choice(n, size=tomb_n * DELTAS, replace=False)], DELTAS)
    dead = np.concatenate(tombstones) if DELTAS else np.empty(0, np.int64)
    exact = ExactTopK(queries, K)
    store = open_store(root / "store", cache_dir=root / "writer-cache", policy=IndexPolicy(nlist=nlist))
    tok = {"name": tokenizer.name, "sha256": tokenizer.sha256}

    start = time.perf_counter()
    sample_rng = np.random.default_rng(SEED + 1)
    lineage = store.train_lineage(topics.sample(min(n, 200_000), sample_rng), embedder=spec, expected_count=n)
    train_s = time.perf_counter() - start
    LOG.info("%d: trained the lineage in %.1fs", n, train_s)

    def write(ids: np.ndarray, part_rng: np.random.Generator, lineage):
        # One copy of the shard's keys: filled block by block, ids sorted so the writer's sort by
        # chunk id copies nothing (at 10M a base shard's keys are 3.8 GB).
        ids = np.sort(ids)
        keys = np.empty((len(ids), DIM), np.float32)
        for lo in range(0, len(ids), BLOCK):
            block = ids[lo : lo + BLOCK]
            keys[lo : lo + len(block)] = topics.sample(len(block), part_rng)
            live = ~np.isin(block, dead)
            exact.add(keys[lo : lo + len(block)][live], block[live])
        return store.write_shard(chunk_rows(ids, part_rng), keys, embedder=spec, lineage=lineage)

    start = time.perf_counter()
    base = [write(part, np.random.default_rng(SEED + 10 + i), lineage) for i, part in enumerate(np.array_split(base_ids, BASE_SHARDS))]
    write_s = time.perf_counter() - start
    LOG.info("%d: wrote %d base shards in %.1fs", n, BASE_SHARDS, write_s)
    draft = Manifest.next(None, version=store.new_version_id(), embedder=spec, tokenizer=tok, add_shards=base, tombstones=[],
                          ledger=None, documents=n // 8, watermark=utcnow(), sources=["bench-scale"])
    store.write_manifest(draft)
    # Tuned as a refresh's validation tunes it; the deltas inherit its search.
    tuning = store.tune(draft.version, target=RECALL_TARGET)
    manifests = [draft.retuned(version=store.new_version_id(), nprobe=tuning.nprobe, parent=None)]
    store.write_manifest(manifests[0])
    LOG.info("%d: tuned nprobe to %d (estimated recall@%d %.3f against exact search, ceiling %.3f, %.1fs)", n, tuning.nprobe, K,
             tuning.recall, tuning.ceiling, tuning.seconds)
    for d in range(DELTAS):
        shard = write(delta_ids[d], np.random.default_rng(SEED + 100 + d), manifests[-1].lineage)
        manifests.append(Manifest.next(manifests[-1], version=store.new_version_id(), embedder=spec, tokenizer=tok, add_shards=[shard],
                                       tombstones=tombstones[d].tolist(), ledger=None, documents=n // 8,
                                       watermark=utcnow(), sources=["bench-scale"]))
        store.write_manifest(manifests[-1])
    return {"tuning": tuning, "store": store, "manifests": manifests, "queries": queries, "truth": exact.ids, "train_s": train_s, "write_s": write_s,
            "live": n + DELTAS * delta_n - len(dead)}


# the server


def rss_anon_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc status")


class PeakSampler:
    """Samples a process's RssAnon every 10 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon_mb(self.pid))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tiny_checkpoint(path: Path, tokenizer, spec) -> None:
    """A random tiny RETRO model: the server needs one; retrieval does not depend on its weights."""
    import torch

    from model.network.config import RetroConfig
    from model.network.retro import Retro

    torch.manual_seed(0)
    Retro(RetroConfig.preset("tiny", vocab_size=tokenizer.vocab_size, embedder=spec.to_dict())).save_pretrained(path, tokenizer=tokenizer)


def wait_version(client, version: str, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.index()
        if info.version == version and info.load_seconds is not None:
            return info
        if info.last_error is not None and info.last_error.version == version:
            raise RuntimeError(f"the server refused {version}: {info.last_error.error}")
        time.sleep(0.05)
    raise TimeoutError(f"the server did not load {version} within {timeout}s")


def embed_query_ms(repeats: int = 100) -> dict[str, float]:
    """p50 ms of embedding one query text in-process, fp32 and bf16 autocast alternating (what a retrieve spends before searching)."""
    from model.contracts.embedder import Embedder

    embedders = {name: Embedder(precision=name) for name in ("fp32", "bf16")}
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for i in range(WARMUP + repeats):
        for name in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            started = time.perf_counter()
            embedders[name].encode([QUERY_TEXTS[i % len(QUERY_TEXTS)] + f" ({i})"])
            if i >= WARMUP:
                times[name].append(time.perf_counter() - started)
    return {name: round(float(np.percentile(t, 50)) * 1000, 2) for name, t in times.items()}


def measure(n: int, root: Path, nlist: int | None = NLIST) -> dict:
    import faiss

    from model.client import RetroClient
    from model.contracts.embedder import Embedder
    from model.contracts.precision import resolve
    from model.contracts.tokenizer import RetroTokenizer

    embedder = Embedder()
    spec, tokenizer = embedder.spec, RetroTokenizer.load()
    del embedder  # only its spec: the server embeds the queries
    built = build_store(root, n, spec, tokenizer, nlist)
    store, manifests, tuning = built["store"], built["manifests"], built["tuning"]
    tiny_checkpoint(root / "checkpoint", tokenizer, spec)

    def start(precision: str) -> tuple[subprocess.Popen, str, Path]:
        # Its output goes to a log: a server that dies at start-up fails wait_ready with the log's end.
        logfile = root / f"server-{precision}.log"
        process, url = serve(root / "checkpoint", root / "store", root / f"server-cache-{precision}", reload_interval=0.1,
                             args=["--precision", precision], env={**os.environ, "HF_HUB_OFFLINE": "1"}, logfile=logfile)
        return process, url, logfile

    # The first server (fp32 queries) is measured throughout; the second (bf16 queries) only answers
    # the latency requests beside it and is stopped before the swap, so it cannot slow that down.
    server, url, server_log = start("fp32")
    other, other_url, other_log = start("bf16")
    try:
        with RetroClient(url, retries=0, timeout=120) as client, \
                RetroClient(other_url, retries=0, timeout=120) as other_client:
            clients = {"fp32": client, "bf16": other_client}
            wait_ready(server, client, server_log)
            wait_ready(other, other_client, other_log)
            time.sleep(1.0)
            baseline = rss_anon_mb(server.pid)
            served = None
            for m in manifests[:-1]:
                store.publish(m.version, expected_current=served)
                info = wait_version(client, m.version)
                wait_version(other_client, m.version)
                served = m.version
                if m is manifests[0]:
                    open_s = info.load_seconds
                    LOG.info("%d: the server opened the base in %.2fs", n, open_s)
            for i in range(WARMUP):
                for c in clients.values():
                    c.retrieve(QUERY_TEXTS[i % len(QUERY_TEXTS)], k=K)
            latencies = {name: [] for name in clients}
            for i in range(REQUESTS):
                # Alternate which precision goes first, so neither always follows the other.
                for name in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
                    started = time.perf_counter()
                    answer = clients[name].retrieve(QUERY_TEXTS[i % len(QUERY_TEXTS)] + f" ({i})", k=K)
                    latencies[name].append(time.perf_counter() - started)
                    assert len(answer.results[0]) == K
            stop(other)
            before = rss_anon_mb(server.pid)
            with PeakSampler(server.pid) as peak:
                store.publish(manifests[-1].version, expected_current=served)
                info = wait_version(client, manifests[-1].version)
            swap_s = info.load_seconds
            time.sleep(0.5)
            after = rss_anon_mb(server.pid)
            LOG.info("%d: swapped in the 1%% delta in %.3fs; RssAnon %.0f -> %.0f MB (peak %.0f)", n, swap_s, before, after, peak.peak)
    finally:
        stop(server, other)
    embed_ms = embed_query_ms()
    auto = resolve("auto", "cpu")

    # recall and search time of the served version, in this process
    with store.open(manifests[-1].version) as view:
        found = view.search_ids(built["queries"], K)
        faiss.omp_set_num_threads(1)  # one query at a time, as the server's batcher mostly sees them
        times = []
        for q in built["queries"][:200]:
            start = time.perf_counter()
            view.search_ids(q[None, :], K)
            times.append(time.perf_counter() - start)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        shards = len(view.shards)
        view_nlist = view.max_nlist
    live = built["live"]
    return {
        "chunks": live,
        "open_s": round(open_s, 3),
        "rss_anon_mb": round(after, 1),
        "retrieve_p50_ms": round(float(np.percentile(latencies[auto.precision], 50)) * 1000, 2),
        "retrieve_p99_ms": round(float(np.percentile(latencies[auto.precision], 99)) * 1000, 2),
        "auto_precision": auto.precision,
        "bf16_probe_speedup": auto.bf16_speedup,
        "retrieve_ms_by_precision": {name: {"p50": round(float(np.percentile(ms, 50)) * 1000, 2), "p99": round(float(np.percentile(ms, 99)) * 1000, 2)}
                                     for name, ms in latencies.items()},
        "embed_query_p50_ms_by_precision": embed_ms,
        "swap_s": round(swap_s, 3),
        "swap_extra_mb": round(max(peak.peak, after) - before, 1),
        "recall_at_2": round(recall(found, built["truth"]), 4),
        "rss_anon_baseline_mb": round(baseline, 1),
        "rss_anon_per_m_chunks_mb": round((after - baseline) / (live / 1e6), 1),
        "search_p50_ms": round(float(np.percentile(times, 50)) * 1000, 3),
        "nprobe": tuning.nprobe,
        "nlist": view_nlist,
        "tuned_recall_at_2_estimate": round(tuning.recall, 4),
        "tuned_ceiling": round(tuning.ceiling, 4),
        "tune_s": round(tuning.seconds, 1),
        "shards": shards,
        "versions": len(manifests),
        "delta_chunks": int(n * DELTA),
        "store_bytes": sum(s.bytes for s in manifests[-1].shards),
        "train_s": round(built["train_s"], 1),
        "write_s": round(built["write_s"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} instead of {FULL_SIZES}")
    parser.add_argument("--sizes", type=int, nargs="+", help="chunk counts to measure (overrides the mode's)")
    parser.add_argument("--nlist", type=int, help="IVF lists of the lineage (default: the store's policy, ~4·sqrt(n))")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--result", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    LOG.setLevel(logging.INFO)  # progress to stderr; stdout carries only the JSON
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    results = []
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        try:
            results.append(measure(n, root, args.nlist))
            print(json.dumps(results[-1]), file=sys.stderr)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    out = {"mode": "sizes" if args.sizes else "quick" if args.quick else "full", "results": results,
           "knobs": {"NLIST": args.nlist, "BASE_SHARDS": BASE_SHARDS, "DELTAS": DELTAS, "DELTA": DELTA, "TOMBSTONED": TOMBSTONED, "QUERIES": QUERIES,
                     "REQUESTS": REQUESTS, "K": K, "DIM": DIM, "RECALL_TARGET": RECALL_TARGET},
           "machine": machine()}
    write_result(args.result, out, as_json=args.json)


if __name__ == "__main__":
    main()
