"""Server memory under sustained retrieve load: N clients for M minutes across several swaps.

Runs ``retrofresh serve`` as a separate process on 127.0.0.1, drives it with ``CLIENTS`` concurrent
loops that each send ``/v1/retrieve`` batches of 1-8 texts of varied length at k=8, publishes a
new version every ``DURATION_S / (SWAPS + 1)`` seconds, and samples the server's RSS and RssAnon
(``/proc/<pid>/status``) every ``SAMPLE_EVERY_S``. After ``WARMUP_S`` of traffic, the RSS must
stay flat: ``growth`` = (mean of the last ``TAIL`` samples - mean of the first ``TAIL`` samples
after warm-up) / the latter, and the run passes when it is under ``MAX_GROWTH``.

    python -m bench.soak [--quick] [--json]

Writes bench/results/soak.json (rss_start_mb, rss_end_mb, growth, requests, failed, ...) and
prints it; with ``--json`` only the JSON object goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.swap import prepare, publish
from bench.common import RESULTS, log, machine, serve, stop, write_result

# knobs
CLIENTS = 20  # concurrent client loops
DURATION_S = 240.0  # traffic after warm-up
WARMUP_S = 30.0  # traffic before the first counted sample (allocator pools, first batches)
SWAPS = 3  # versions published during the measured traffic
SAMPLE_EVERY_S = 2.0  # RSS sampling period
TAIL = 5  # samples averaged at each end of the measured window
MAX_TEXTS = 8  # texts per request: 1..MAX_TEXTS
K = 8  # neighbours per text
CHUNKS_PER_VERSION = 4_000  # each version is a full rebuild of this many chunks
REAL_DOCS_PER_VERSION = 30  # documents actually embedded; the rest are perturbed copies of their keys
RELOAD_INTERVAL_S = 1.0  # how often the server checks CURRENT
MAX_GROWTH = 0.05  # the acceptance bound on growth after warm-up
QUICK = dict(CLIENTS=8, DURATION_S=60.0, WARMUP_S=40.0, SWAPS=2, CHUNKS_PER_VERSION=2_000, REAL_DOCS_PER_VERSION=10)

RESULT = RESULTS / "soak.json"
WORDS = (
    "harbour master old port mayor river town price bread market winner spring regatta director city "
    "museum opening hours public library edition report changed everyone reading learns item now the of "
    "a in and who what when where is was new season festival bridge council school railway station"
).split()


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a process in MB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["RssAnon"]


# preparing the checkpoint and the versions


def soak_text(label: str, i: int) -> str:
    """Document ``i`` of version ``label``: 200 of the query words, so every query finds neighbours."""
    return f"Edition {label}, report {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(200))


# traffic


def query_texts(rng: random.Random) -> list[str]:
    """1..MAX_TEXTS texts of 3..80 words: every request has another batch shape."""
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 80))) for _ in range(rng.randint(1, MAX_TEXTS))]


async def client_loop(client, stop: asyncio.Event, counts: dict, worker: int) -> None:
    from model.client import RetroError

    rng = random.Random(worker)
    while not stop.is_set():
        try:
            await client.retrieve(query_texts(rng), k=K)
            counts["requests"] += 1
        except RetroError as exc:
            counts["failed"] += 1
            if counts["failed"] <= 3:
                log(f"request failed: {exc}")


async def drive(pid: int, store, spec, tokenizer, shards, labels: list[str], knobs: dict) -> dict:
    from model.client import AsyncRetroClient

    counts = {"requests": 0, "failed": 0}
    samples: list[tuple[float, float, float]] = []  # (seconds since warm-up ended, rss, anon)
    stop = asyncio.Event()
    async with AsyncRetroClient(knobs["url"], timeout=60, retries=0, max_connections=knobs["CLIENTS"] + 2) as client:
        tasks = [asyncio.create_task(client_loop(client, stop, counts, i)) for i in range(knobs["CLIENTS"])]
        await asyncio.sleep(knobs["WARMUP_S"])
        started, warm_requests = time.monotonic(), dict(counts)
        spacing = knobs["DURATION_S"] / (knobs["SWAPS"] + 1)
        next_swap, swapped = spacing, 0
        while (elapsed := time.monotonic() - started) < knobs["DURATION_S"]:
            rss, anon = memory_mb(pid)
            samples.append((elapsed, rss, anon))
            log(f"t={elapsed:6.1f}s rss={rss:7.1f} MB anon={anon:7.1f} MB requests={counts['requests']} failed={counts['failed']}")
            if swapped < knobs["SWAPS"] and elapsed >= next_swap:
                swapped += 1
                label = labels[swapped]
                version = await asyncio.to_thread(publish, store, spec, tokenizer, shards[label], label, source="soak")
                log(f"published {version} ({label})")
                next_swap += spacing
            await asyncio.sleep(SAMPLE_EVERY_S)
        stop.set()
        await asyncio.gather(*tasks)
        index = await client.index()
    return {
        "samples": samples,
        "requests": counts["requests"] - warm_requests["requests"],
        "failed": counts["failed"] - warm_requests["failed"],
        "swaps": swapped,
        "swaps_seen": index.swaps - 1,
        "seconds": round(time.monotonic() - started, 1),
    }


def summarise(run: dict, knobs: dict) -> dict:
    samples = np.asarray(run["samples"])
    tail = min(TAIL, max(1, len(samples) // 3))
    rss_start, rss_end = float(samples[:tail, 1].mean()), float(samples[-tail:, 1].mean())
    anon_start, anon_end = float(samples[:tail, 2].mean()), float(samples[-tail:, 2].mean())
    growth = (rss_end - rss_start) / rss_start
    return {
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "growth": round(growth, 4),
        "passed": bool(growth < MAX_GROWTH and run["failed"] == 0),
        "requests": run["requests"],
        "failed": run["failed"],
        "rss_anon_start_mb": round(anon_start, 1),
        "rss_anon_end_mb": round(anon_end, 1),
        "anon_growth": round((anon_end - anon_start) / anon_start, 4),
        "rss_max_mb": round(float(samples[:, 1].max()), 1),
        "swaps": run["swaps"],
        "swaps_seen_by_server": run["swaps_seen"],
        "retrieve_rps": round(run["requests"] / run["seconds"], 1),
        "rss_samples_mb": [[round(t, 1), round(r, 1)] for t, r, _ in samples.tolist()],
        "knobs": {**{k: v for k, v in knobs.items() if k != "url"}, "K": K, "MAX_TEXTS": MAX_TEXTS, "MAX_GROWTH": MAX_GROWTH},
        "server_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Knobs live at the top of bench/soak.py.")
    parser.add_argument("--quick", action="store_true", help="fewer clients for about a minute (small versions)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"where to write the result (default {RESULT})")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    knobs = dict(CLIENTS=CLIENTS, DURATION_S=DURATION_S, WARMUP_S=WARMUP_S, SWAPS=SWAPS,
                 CHUNKS_PER_VERSION=CHUNKS_PER_VERSION, REAL_DOCS_PER_VERSION=REAL_DOCS_PER_VERSION)  # fmt: skip
    if args.quick:
        knobs.update(QUICK)
    labels = [chr(ord("A") + i) for i in range(knobs["SWAPS"] + 1)]

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        root = Path(tmp)
        store, spec, tokenizer, shards = prepare(root, labels, knobs, document=soak_text)
        publish(store, spec, tokenizer, shards["A"], "A", source="soak")
        server, url = serve(root / "checkpoint", root / "store", root / "server-cache", reload_interval=RELOAD_INTERVAL_S,
                            env={**os.environ, "RETROFRESH_MAX_INFLIGHT": str(knobs["CLIENTS"] * 4)})
        knobs["url"] = url
        try:
            from model.client import RetroClient

            with RetroClient(url, retries=0) as client:
                client.wait_ready(timeout=180)
            log(f"server pid {server.pid} ready; {knobs['CLIENTS']} clients, warm-up {knobs['WARMUP_S']}s, then {knobs['DURATION_S']}s")
            result = summarise(asyncio.run(drive(server.pid, store, spec, tokenizer, shards, labels, knobs)), knobs)
        finally:
            stop(server)

    write_result(args.out, result, as_json=args.json,
                 summary=f"rss {result['rss_start_mb']} -> {result['rss_end_mb']} MB (growth {result['growth']:+.2%}), "
                         f"{result['requests']} requests, {result['failed']} failed: {'passed' if result['passed'] else 'FAILED'}")


if __name__ == "__main__":
    main()
