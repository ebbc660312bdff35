"""What orchestration costs: a refresh flow's wall time against the time its steps take.

    python -m bench.refresh [--quick] [--json]

Refreshes a fresh local store from the sample world, edition 0 then 1, 2, ..., then once more
with nothing new, all through ``refresh_corpus`` against a temporary Prefect API. For each run it
reads the task runs back from the API and reports each step's run time (ingest, validate,
publish, ...), the wall time of the flow call, and the difference: what Prefect, the lease and the
artifacts add. Also times acquiring and releasing the refresh lease on a local store.

Writes bench/results/refresh.json and prints it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_result

# knobs
SEED = 0
SIZE = 4  # sample world scale (size 1: ~35 pages, ~130 chunks)
EDITIONS = 3  # editions refreshed in order, then one refresh with nothing new
PROBE_QUERIES = 16
LEASE_ROUNDS = 50
QUICK = dict(SIZE=1, EDITIONS=2, LEASE_ROUNDS=20)

RESULT = Path(__file__).parent / "results" / "refresh.json"


def step_seconds(flow_run_id) -> dict[str, float]:
    """Run time of each task of a flow run, by task name (summed when a task ran more than once)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    steps: dict[str, float] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        steps[name] = round(steps.get(name, 0.0) + run.total_run_time.total_seconds(), 3)
    return steps


def refresh_once(sources: str, store: str, edition: int | None) -> dict:
    from flows.refresh import refresh_corpus

    started = time.perf_counter()
    state = refresh_corpus(sources=sources, store=store, probe_queries=PROBE_QUERIES, return_state=True)
    wall = time.perf_counter() - started
    summary = state.result()
    steps = step_seconds(state.state_details.flow_run_id)
    return {
        "edition": edition,
        "published": summary["published"],
        "documents": summary["documents"],
        "chunks_added": summary["chunks_added"],
        "chunks_removed": summary["chunks_removed"],
        "wall_s": round(wall, 3),
        "steps_s": steps,
        "ingest_share": round(steps.get("run-ingest", 0.0) / wall, 3),
        "overhead_s": round(wall - sum(steps.values()), 3),
        "probe_recall": summary["validation"].get("probe_recall"),
        "freshness_lag_s": summary["freshness_lag_s"],
    }


def lease_timing(store: str) -> dict:
    from flows.common.lease import RefreshLease
    from model.store import open_store

    backend = open_store(store).backend
    acquire, release = [], []
    for _ in range(LEASE_ROUNDS):
        lease = RefreshLease(backend, holder="bench")
        t = time.perf_counter()
        lease.acquire()
        acquire.append(time.perf_counter() - t)
        t = time.perf_counter()
        lease.release()
        release.append(time.perf_counter() - t)
    return {"rounds": LEASE_ROUNDS, "acquire_ms_median": round(1000 * statistics.median(acquire), 3),
            "release_ms_median": round(1000 * statistics.median(release), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller run: {QUICK}")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    if args.quick:
        globals().update(QUICK)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    import yaml
    from prefect.testing.utilities import prefect_test_harness

    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld

    tmp = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    site = SampleSiteServer(SampleWorld(SEED, SIZE), 0).start()
    sources = tmp / "sources.yaml"
    sources.write_text(yaml.safe_dump({
        "fetch": {"crawl_delay_s": 0, "timeout_s": 5, "deadline_s": 20, "retries": 1, "backoff_s": 0.01, "max_backoff_s": 0.05},
        "sources": [{"kind": "site", "name": "sample", "start_urls": [site.base_url + "/"], "allow_networks": ["127.0.0.0/8"]}],
    }))
    store = str(tmp / "store")
    runs = []
    try:
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=300):
            api_start = time.perf_counter() - started
            for edition in range(EDITIONS):
                site.set_edition(edition)
                runs.append(refresh_once(str(sources), store, edition))
            runs.append(refresh_once(str(sources), store, None))  # nothing new
        lease = lease_timing(store)
    finally:
        site.stop()
    result = {
        "benchmark": "refresh",
        "knobs": {"SEED": SEED, "SIZE": SIZE, "EDITIONS": EDITIONS, "PROBE_QUERIES": PROBE_QUERIES, "quick": args.quick},
        "machine": machine(),
        "prefect_test_api_start_s": round(api_start, 3),
        "runs": runs,
        "overhead_s_median": round(statistics.median(r["overhead_s"] for r in runs), 3),
        "lease_local": lease,
    }
    write_result(RESULT, result, as_json=args.json, indent=1)


if __name__ == "__main__":
    main()
