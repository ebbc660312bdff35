"""Source -> served lag: how long after a change on a site the served model retrieves it.

    python -m bench.freshness [--quick] [--json]

The whole event path runs for real on this machine: the sample site (one fact changes per
edition), ``Watcher`` polling its sitemap and emitting ``retrofresh.source.changed`` to a Prefect
API (the test harness: an ephemeral server with its trigger services), the ``refresh-changed``
deployment executing its triggered runs (RUNNER: ``warm``, deployed to a process work pool and run
by ``retrofresh flows worker`` inside its long-lived process; ``worker``, the same pool and
``prefect worker start``, a fresh process per run; ``serve``, ``retrofresh flows serve``, a fresh
subprocess per run), and ``retrofresh serve`` (a tiny random RETRO
checkpoint: retrieval does not depend on the weights) told to reload by the flow. A change's lag
is the time from switching the site's edition to the first ``/v1/retrieve`` answer, through
``model.client.RetroClient``, whose neighbours state the new value.

Phases: CHANGES changes one at a time at random gaps (lag p50/p95/max and a per-step breakdown
from the flow runs' task runs and the ingest job's counters); then the sustained rate (changes at
a fixed pace, faster and faster, while the lag is watched); and the cron-only path: one full
``refresh_corpus`` after a change, measured, plus the wait for the next tick of the default
15-minute schedule (uniform over the interval, so its median is half of it: modelled, not waited).

Writes bench/results/freshness.json (p50_s, p95_s, max_s, steps, cron_p50_s,
sustained_changes_per_min, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import RESULTS, ROOT, log, machine, serve, start, stop, write_result

# knobs
SEED = 0
SIZE = 1  # sample world scale (size 1: ~35 pages)
PATH = "both"  # "in-process" (watch --refresh-here), "deployment" (event -> served deployment), or both
CHANGES = 24  # changes measured one at a time on the in-process path (the issue asks for at least 20)
DEPLOYMENT_CHANGES = 20  # the same on the deployment path
RUNNER = "warm"  # who runs the deployment's triggered runs: "warm" (retrofresh flows worker), "worker" (prefect worker start), "serve"
GAP_S = (1.0, 6.0)  # random wait after a change is seen before the next one
WATCH_INTERVAL_S = 1.0  # how often the watch polls the sitemap
SERVE_POLL_S = 1.0  # how often the worker (or `retrofresh flows serve`) looks for runs to start
SEEN_TIMEOUT_S = 120.0  # a change not retrieved by then counts as this lag (and as missed)
CLIENT_POLL_S = 0.1  # how often the client asks /v1/retrieve while waiting
SUSTAINED_PACES_S = (12.0, 8.0, 5.0, 3.0)  # seconds between changes in the sustained phase
SUSTAINED_CHANGES = 8  # changes per pace
CRON_INTERVAL_S = 15 * 60  # the refresh deployment's default schedule
K = 4
QUICK = dict(CHANGES=20, DEPLOYMENT_CHANGES=12, GAP_S=(1.0, 3.0), SUSTAINED_PACES_S=(8.0, 4.0), SUSTAINED_CHANGES=6)

RESULT = RESULTS / "freshness.json"
TOKEN = "bench-freshness-token"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Change:
    edition: int
    sentence: str  # the new fact, as every page states it
    prompt: str
    changed_at: float  # time.time() when the site switched
    announced_at: float | None = None
    seen_at: float | None = None
    version: str | None = None

    @property
    def lag(self) -> float | None:
        return None if self.seen_at is None else self.seen_at - self.changed_at


@dataclass
class Tracker:
    """Changes in flight, checked against the served model until each is retrieved."""

    client: object
    changes: list[Change] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, change: Change) -> None:
        with self.lock:
            self.changes.append(change)

    def outstanding(self) -> list[Change]:
        with self.lock:
            return [c for c in self.changes if c.seen_at is None and time.time() - c.changed_at < SEEN_TIMEOUT_S]

    def check(self) -> None:
        waiting = self.outstanding()
        if not waiting:
            return
        answer = self.client.retrieve([c.prompt for c in waiting], k=K)
        now = time.time()
        for change, neighbours in zip(waiting, answer.results):
            if any(change.sentence in (n.text + " " + n.continuation) for n in neighbours):
                change.seen_at, change.version = now, answer.index_version

    def wait(self, change: Change) -> None:
        while change.seen_at is None and time.time() - change.changed_at < SEEN_TIMEOUT_S:
            self.check()
            time.sleep(CLIENT_POLL_S)


def prepare(root: Path, site) -> tuple[Path, Path]:
    """Sources file, store (edition 0 ingested and published), tiny checkpoint."""
    import torch
    import yaml

    from beam_jobs.ingest import run_ingest
    from model.contracts.embedder import Embedder
    from model.contracts.tokenizer import RetroTokenizer
    from model.network.config import RetroConfig
    from model.network.retro import Retro
    from model.store import open_store

    sources = root / "sources.yaml"
    sources.write_text(yaml.safe_dump({
        "fetch": {"crawl_delay_s": 0, "timeout_s": 5, "deadline_s": 20, "retries": 1, "backoff_s": 0.05, "max_backoff_s": 0.5},
        "sources": [{"kind": "site", "name": "sample", "start_urls": [site.base_url + "/"], "allow_private": True}],
    }))
    store = root / "store"
    first = run_ingest(sources, str(store))
    open_store(store).publish(first.version, expected_current=None)
    tokenizer = RetroTokenizer.load()
    torch.manual_seed(0)
    config = RetroConfig.preset("tiny", vocab_size=tokenizer.vocab_size, embedder=Embedder().spec.to_dict())
    Retro(config).save_pretrained(root / "checkpoint", tokenizer=tokenizer)
    return sources, store


def next_change(site, tracker: Tracker) -> Change:
    edition = site.edition.number + 1
    fact = site.world.edition(edition).changes[0]
    changed_at = time.time()
    site.set_edition(edition)
    change = Change(edition, fact.sentence, fact.prompt, changed_at)
    tracker.add(change)
    return change


def run_steps(deployed: bool, since: float, until: float) -> tuple[list[dict], dict[str, float]]:
    """Per refresh-changed run (of the deployment, or called in-process) between two times: start
    delay and each task's time; the medians of the ingest job's step counters."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
    )  # fmt: skip

    runs_out, job_steps = [], {}
    with get_client(sync_client=True) as client:
        found = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["refresh-changed"])), limit=200)
        runs = [r for r in found if (r.deployment_id is not None) == deployed and since <= r.created.timestamp() <= until]
        for run in runs:
            if run.start_time is None:
                continue
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            steps: dict[str, float] = {}
            for task in tasks:
                name = task.name.rsplit("-", 1)[0]
                steps[name] = steps.get(name, 0.0) + task.total_run_time.total_seconds()
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            job = {}
            for artifact in artifacts:
                if artifact.key == "refresh-changed-steps":
                    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
                    for row in rows:
                        job[row["step"]] = job.get(row["step"], 0.0) + float(row["seconds"])
            runs_out.append({
                "created": run.created.timestamp(), "start": run.start_time.timestamp(),
                "end": run.end_time.timestamp() if run.end_time else None,
                "state": run.state_type.value if run.state_type else None,
                "start_delay_s": round(run.start_time.timestamp() - run.created.timestamp(), 3),
                "urls": len(run.parameters.get("urls") or []), "tasks_s": steps, "job_s": job,
            })
    for run in runs_out:
        for name, seconds in run["job_s"].items():
            job_steps.setdefault(name, []).append(seconds)
    return runs_out, {name: round(statistics.median(v), 3) for name, v in job_steps.items()}


def breakdown(changes: list[Change], runs: list[dict], job_steps: dict[str, float], announced: list[tuple[float, tuple]]) -> dict:
    """Median seconds of each step from change to answer."""
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 3) if values else None

    refreshing = [r for r in runs if "run-ingest" in r["tasks_s"]]
    task = lambda name: med([r["tasks_s"].get(name) for r in refreshing])  # noqa: E731
    announce_times = sorted(t for t, _ in announced)
    # event -> run created: the trigger; created -> running: the runner's poll and the subprocess start
    trigger = []
    for run in refreshing:
        before = [t for t in announce_times if t <= run["created"] + 0.05]
        if before:
            trigger.append(run["created"] - before[-1])
    return {
        "detect": med([c.announced_at - c.changed_at for c in changes if c.announced_at]),
        "trigger": med(trigger),
        "start_run": med([r["start_delay_s"] for r in refreshing]),
        "record_and_lease": med([sum(r["tasks_s"].get(n, 0.0) for n in ("record-changes", "absorb-waiting-runs", "wait-for-lease", "take-pending", "read-current")) for r in refreshing]),
        "ingest": task("run-ingest"),
        "fetch": job_steps.get("fetch"),
        "extract": job_steps.get("extract"),
        "embedder_load": job_steps.get("embedder_load"),
        "embed": job_steps.get("embed"),
        "write": job_steps.get("write"),
        "compact": task("compact-version"),
        "validate": task("validate-version"),
        "publish": task("publish-version"),
        "swap": task("notify-server"),  # the server loads, verifies, warms and swaps while the flow waits
        "artifacts": med([r["tasks_s"].get("summarize-refresh", 0) + r["tasks_s"].get("record-refresh-artifacts", 0) for r in refreshing]),
        "run_total": med([r["end"] - r["start"] for r in refreshing if r["end"]]),
    }


def lag_phase(label: str, site, tracker: Tracker, changes: int) -> list[Change]:
    """``changes`` changes, one at a time: each waits until it is retrieved, then a random gap."""
    log(f"{label}: warm-up change (not measured)")
    tracker.wait(next_change(site, tracker))
    log(f"{label}: {changes} changes, one at a time")
    measured = []
    for i in range(changes):
        time.sleep(random.uniform(*GAP_S))
        change = next_change(site, tracker)
        tracker.wait(change)
        measured.append(change)
        log(f"{label}: change {i + 1}/{changes} (edition {change.edition}): "
            + (f"{change.lag:.2f} s" if change.lag is not None else f"not seen in {SEEN_TIMEOUT_S:.0f} s"))
    return measured


def summarize_lags(measured: list[Change], runs: list[dict], job_steps: dict, announced: list) -> dict:
    lags = [c.lag if c.lag is not None else SEEN_TIMEOUT_S for c in measured]
    return {
        "changes": len(measured),
        "missed": sum(1 for c in measured if c.lag is None),
        "p50_s": round(percentile(lags, 50), 3),
        "p95_s": round(percentile(lags, 95), 3),
        "max_s": round(max(lags), 3),
        "lags_s": [round(x, 3) for x in lags],
        "steps": breakdown(measured, runs, job_steps, announced),
        "runs": len(runs),
        "refreshing_runs": sum(1 for r in runs if "run-ingest" in r["tasks_s"]),
    }


def cron_lag(site, sources: Path, store: Path, servers: list[str], tracker: Tracker) -> dict:
    """One change through a full refresh_corpus (what each cron tick runs), measured to the answer."""
    from flows.refresh import refresh_corpus

    change = next_change(site, tracker)
    started = time.time()
    refresh_corpus(sources=str(sources), store=str(store), servers=servers)
    refresh_s = time.time() - started
    tracker.wait(change)
    seen = change.lag if change.lag is not None else SEEN_TIMEOUT_S
    return {
        "full_refresh_s": round(refresh_s, 3),
        "change_to_answer_after_tick_s": round(seen, 3),
        "interval_s": CRON_INTERVAL_S,
        "cron_p50_s": round(CRON_INTERVAL_S / 2 + seen, 3),
        "cron_p95_s": round(0.95 * CRON_INTERVAL_S + seen, 3),
        "model": "lag = wait for the next tick (uniform over the interval) + the measured full refresh and swap",
    }


def sustained(site, tracker: Tracker) -> dict:
    """Changes at a fixed pace, faster and faster; a pace is absorbed when its lag does not grow."""
    paces = []
    for pace in SUSTAINED_PACES_S:
        batch = []
        for _ in range(SUSTAINED_CHANGES):
            due = time.time() + pace
            batch.append(next_change(site, tracker))
            while time.time() < due:
                tracker.check()
                time.sleep(CLIENT_POLL_S)
        deadline = time.time() + SEEN_TIMEOUT_S
        while any(c.seen_at is None for c in batch) and time.time() < deadline:
            tracker.check()
            time.sleep(CLIENT_POLL_S)
        lags = [c.lag if c.lag is not None else SEEN_TIMEOUT_S for c in batch]
        half = len(lags) // 2
        first, last = statistics.median(lags[:half]), statistics.median(lags[half:])
        absorbed = all(c.lag is not None for c in batch) and last <= max(1.5 * first, first + 3.0)
        paces.append({"seconds_between_changes": pace, "changes_per_min": round(60 / pace, 2), "lags_s": [round(x, 2) for x in lags],
                      "first_half_median_s": round(first, 2), "second_half_median_s": round(last, 2), "absorbed": absorbed})
        log(f"sustained: a change every {pace:g} s -> lags {paces[-1]['lags_s']} ({'absorbed' if absorbed else 'growing'})")
        if not absorbed:
            break
    best = max((p["changes_per_min"] for p in paces if p["absorbed"]), default=0.0)
    return {"paces": paces, "sustained_changes_per_min": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller run: {QUICK}")
    parser.add_argument("--json", action="store_true", help="print only the result JSON on stdout")
    parser.add_argument("--path", choices=["in-process", "deployment", "both"], default=None, help=f"which path to measure (default {PATH})")
    parser.add_argument("--runner", choices=["warm", "worker", "serve"], default=None, help=f"who runs the deployment's runs (default {RUNNER})")
    parser.add_argument("--changes", type=int, default=None, help="override CHANGES (a smoke run; the issue asks for >= 20)")
    args = parser.parse_args()
    if args.quick:
        globals().update(QUICK)
    if args.changes is not None:
        globals()["CHANGES"] = globals()["DEPLOYMENT_CHANGES"] = args.changes
    if args.path:
        globals()["PATH"] = args.path
    if args.runner:
        globals()["RUNNER"] = args.runner
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["RETROFRESH_ADMIN_TOKEN"] = TOKEN
    random.seed(SEED)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from beam_jobs.sources import load_sources
    from flows.common.events import emit_changes
    from flows.watch import LocalRefresher, Watcher
    from model.client import RetroClient

    loads: list[float] = []  # the 1-minute load average every 5 s: the machine is shared
    sampling = threading.Event()

    def sample_load():
        while not sampling.wait(5.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    root = Path(tempfile.mkdtemp(prefix="bench-freshness-"))
    site = SampleSiteServer(SampleWorld(SEED, SIZE, changes_per_edition=1), 0).start()
    processes: list[subprocess.Popen] = []
    try:
        log(f"preparing in {root}")
        sources, store = prepare(root, site)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server, server_url = serve(root / "checkpoint", store, root / "server-cache", reload_interval=60, env=env, logfile=root / "server.log")
        processes.append(server)
        env["RETROFRESH_SERVERS"] = json.dumps([server_url])
        with prefect_test_harness(server_startup_timeout=300):
            env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
            client = RetroClient(server_url, retries=0, timeout=30)
            client.wait_ready(timeout=300)
            tracker = Tracker(client)
            config = load_sources(sources)
            announced: list[tuple[float, tuple]] = []

            def noting(forward):
                def announce(found):
                    now = time.time()
                    announced.append((now, found.urls))
                    with tracker.lock:
                        for change in tracker.changes:
                            if change.announced_at is None and change.changed_at <= now:
                                change.announced_at = now
                    forward(found)
                return announce

            def watching(forward) -> tuple[Watcher, threading.Thread, threading.Event]:
                stop_event = threading.Event()
                watch = Watcher(config, str(store), interval_s=WATCH_INTERVAL_S, announce=noting(forward))
                thread = threading.Thread(target=watch.run, kwargs={"should_stop": stop_event.is_set}, daemon=True)
                thread.start()
                return watch, thread, stop_event

            results = {}
            if PATH in ("in-process", "both"):
                # `retrofresh watch --refresh-here`: the watch runs the targeted refreshes itself.
                refresher = LocalRefresher(str(sources), str(store), servers=[server_url]).start()
                watcher, thread, stop_event = watching(refresher.announce)
                began = time.time()
                measured = lag_phase("in-process", site, tracker, CHANGES)
                runs, job_steps = run_steps(False, began - 1, time.time())
                results["in-process"] = summarize_lags(measured, runs, job_steps, announced)
                log("in-process: sustained phase")
                results["in-process"]["sustained"] = sustained(site, tracker)
                stop_event.set()
                thread.join(timeout=10)
                watcher.close()
                refresher.wait_idle(timeout=120)
                refresher.stop()
            if PATH in ("deployment", "both"):
                # `retrofresh watch` + a worker (or `retrofresh flows serve`): events trigger the refresh-changed deployment.
                processes.append(start_deployment(root, store, sources, env))

                def emit(found):
                    emit_changes(list(found.urls), source=found.source, origin="watch", store=str(store))

                watcher, thread, stop_event = watching(emit)
                began = time.time()
                measured = lag_phase("deployment", site, tracker, DEPLOYMENT_CHANGES)
                runs, job_steps = run_steps(True, began - 1, time.time())
                results["deployment"] = summarize_lags(measured, runs, job_steps, announced)
                stop_event.set()
                thread.join(timeout=10)
                watcher.close()
                stop(processes.pop())  # no triggered refresh may race the full one below
            log("cron-only path: one full refresh after a change")
            cron = cron_lag(site, sources, store, [server_url], tracker)
        main_path = results.get("in-process") or results["deployment"]
        result = {
            "benchmark": "freshness",
            "knobs": {"SEED": SEED, "SIZE": SIZE, "CHANGES": CHANGES, "DEPLOYMENT_CHANGES": DEPLOYMENT_CHANGES, "GAP_S": list(GAP_S),
                      "RUNNER": RUNNER, "WATCH_INTERVAL_S": WATCH_INTERVAL_S, "SERVE_POLL_S": SERVE_POLL_S, "SUSTAINED_PACES_S": list(SUSTAINED_PACES_S),
                      "SUSTAINED_CHANGES": SUSTAINED_CHANGES, "PATH": PATH, "quick": args.quick},
            "machine": machine(load_avg_1m_median=round(statistics.median(loads), 2) if loads else None,
                               load_avg_1m_max=round(max(loads), 2) if loads else None),
            "path": ("site edition switch -> watch (sitemap lastmod) -> targeted refresh (fetch, extract, embed, write, validate, publish) "
                     "-> /admin/reload -> first /v1/retrieve answer with the new value; top-level numbers: "
                     + ("the in-process path (watch --refresh-here)" if "in-process" in results else "the deployment path")),
            "p50_s": main_path["p50_s"],
            "p95_s": main_path["p95_s"],
            "max_s": main_path["max_s"],
            "steps": main_path["steps"],
            "cron_p50_s": cron["cron_p50_s"],
            "p50_vs_cron_p50": round(cron["cron_p50_s"] / main_path["p50_s"], 1),
            "sustained_changes_per_min": results.get("in-process", {}).get("sustained", {}).get("sustained_changes_per_min"),
            "paths": results,
            "cron": cron,
        }
    finally:
        sampling.set()
        stop(*processes)
        site.stop()
    write_result(RESULT, result, as_json=args.json, indent=1,
                 summary=f"lag p50 {result['p50_s']} s, p95 {result['p95_s']} s, max {result['max_s']} s; cron-only p50 {result['cron_p50_s']} s; "
                         f"sustained {result['sustained_changes_per_min']} changes/min")


def start_deployment(root: Path, store: Path, sources: Path, env: dict) -> subprocess.Popen:
    """The refresh-changed deployment and who runs it (RUNNER); returns once it can take runs."""
    import yaml

    from flows.deployments import DEFAULT_DEPLOYMENTS

    spec = next(s for s in DEFAULT_DEPLOYMENTS if s.name == "refresh-changed")
    entry = {"name": spec.name, "entrypoint": spec.entrypoint, "parameters": spec.parameters, "schedules": [], "triggers": list(spec.triggers)}
    if RUNNER == "serve":
        (root / "prefect.yaml").write_text(yaml.safe_dump({"deployments": [entry]}))
        process = start([sys.executable, "-m", "flows.cli", "flows", "serve", "--config", str(root / "prefect.yaml"),
                         "--store", str(store), "--sources", str(sources), "--poll-interval", str(SERVE_POLL_S)],
                        env=env, logfile=root / "flows-serve.log")
        wait_for_deployment("refresh-changed/refresh-changed", process, root / "flows-serve.log")
        return process
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = "bench-freshness"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    (root / "prefect.yaml").write_text(yaml.safe_dump({
        "name": "bench-freshness", "build": None, "push": None, "pull": [],
        "deployments": [entry | {"work_pool": {"name": pool, "work_queue_name": "default"}}]}))
    deployed = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--prefect-file", str(root / "prefect.yaml"),
                               "--all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if deployed.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}")
    worker_env = env | {"RETROFRESH_STORE": str(store), "RETROFRESH_SOURCES": str(sources), "PREFECT_WORKER_QUERY_SECONDS": str(SERVE_POLL_S)}
    command = ([sys.executable, "-m", "flows.cli", "flows", "worker", "--pool", pool, "--poll-interval", str(SERVE_POLL_S)] if RUNNER == "warm"
               else [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", pool])
    process = start(command, env=worker_env, logfile=root / "worker.log")
    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while not client.read_workers_for_work_pool(pool):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not come up:\n{(root / 'worker.log').read_text()[-3000:]}")
            time.sleep(0.5)
    return process


def wait_for_deployment(name: str, process: subprocess.Popen, logfile: Path, timeout: float = 300) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:  # noqa: BLE001 - not registered yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"`flows serve` did not register {name}:\n{logfile.read_text()[-3000:]}")
                time.sleep(0.5)


if __name__ == "__main__":
    main()
