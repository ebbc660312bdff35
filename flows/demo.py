"""``retrofresh demo``: the whole system on the sample world, end to end, on this machine.

It serves edition 0 of the sample world, refreshes an empty store from it (the Prefect flow, the
Beam job in-process), trains a tiny RETRO model on that version, starts the HTTP server, asks it
about facts that are about to change, serves edition 1, refreshes again (the server is told to
reload), and asks the same questions: the answers now come from the new index version, with no
retraining. Every step prints the command a user would run to do it by hand.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(title: str, command: str | None = None) -> None:
    console.rule(f"[bold]{title}")
    if command:
        console.print(f"[dim]$ {command}[/dim]")


def _write_sources(path: Path, base_url: str) -> None:
    # allow_private: the sample site is on 127.0.0.1, which the fetcher refuses by default.
    path.write_text(
        "fetch:\n"
        "  crawl_delay_s: 0      # our own loopback site; keep the default (1 s) for real hosts\n"
        "sources:\n"
        "  - kind: site\n"
        "    name: sample\n"
        f'    start_urls: ["{base_url}/"]\n'
        "    allow_private: true\n"
    )


def _with_context(change, sentence: str) -> str:
    # RETRO conditions a chunk on neighbours retrieved for the chunk before it, so the fact must
    # follow at least one full 64-token chunk about the same entity to be scored with retrieval.
    return " ".join([change.prompt + " ..."] * 12) + " " + sentence


def _ask(client, changes) -> list[dict]:
    """Retrieve for each changed fact's prompt; note whether the top neighbours state old or new.

    Also scores the old and the new sentence (bits per byte, retrieval on): a model that reads its
    neighbours finds the value they state less surprising.
    """
    rows = []
    for change in changes:
        hits = client.retrieve(change.prompt, k=2)
        neighbours = hits.results[0]
        texts = " ".join(n.text for n in neighbours)
        scores = {which: client.score(_with_context(change, sentence)).bits_per_byte
                  for which, sentence in (("old", change.old_sentence), ("new", change.sentence))}
        rows.append({
            "fact": f"{change.entity} {change.attribute}",
            "old": change.old,
            "new": change.new,
            "index_version": hits.index_version,
            "neighbours_state": {(True, False): "old", (False, True): "new", (True, True): "both"}.get(
                (change.old in texts, change.new in texts), "neither"),
            "retrieved_new": change.new in texts,
            "top_url": neighbours[0].url if neighbours else None,
            "bpb_old": round(scores["old"], 3),
            "bpb_new": round(scores["new"], 3),
        })
    return rows


COLUMNS = ("fact", "old", "new", "neighbours_state", "bpb_old", "bpb_new")


def _table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[column]) for column in COLUMNS))
    return table


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"), show_default=True,
              help="where the store, checkpoint and logs go (emptied first)")
@click.option("--size", type=click.IntRange(min=1), default=2, show_default=True, help="sample world size (entities scale with it)")
@click.option("--train-steps", type=click.IntRange(min=1), default=120, show_default=True,
              help="training steps of the tiny RETRO model (~1 s each on 2 cores; the point is the index, not the weights)")
@click.option("--keep-running", is_flag=True, help="leave the site and server up at the end (Ctrl-C stops them)")
def demo(workdir: Path, size: int, train_steps: int, keep_running: bool) -> None:
    """Run the whole pipeline on the bundled sample world and show the index update a served model.

    Takes a few minutes on 2 CPU cores; nothing is downloaded.
    """
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from flows.refresh import refresh_corpus
    from model.client import RetroClient

    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    store, checkpoint, sources = str(workdir / "store"), workdir / "checkpoint", workdir / "sources.yaml"
    token = secrets.token_urlsafe(16)
    os.environ["RETROFRESH_ADMIN_TOKEN"] = token  # the refresh flow reads it to call /admin/reload
    os.environ["RETROFRESH_CACHE_DIR"] = str(workdir / "cache")

    world = SampleWorld(seed=0, size=size)
    site = SampleSiteServer(world, 0).start()
    server = None
    try:
        _write_sources(sources, site.base_url)
        _step("1. Sample world, edition 0", f"retrofresh site serve --edition 0 --port {site.port}")
        console.print(f"serving {len(site.edition.document_paths())} documents at {site.base_url}")

        _step("2. Refresh an empty store from it (Prefect flow → Beam ingest → publish)",
              f"retrofresh refresh --sources {sources} --store {store}")
        first = refresh_corpus(sources=str(sources), store=store)
        console.print_json(json.dumps({k: first[k] for k in ("version", "documents", "chunks_added", "seconds")}))

        _step("3. Train a tiny RETRO model on that version (neighbours from the store, same-document ones excluded)",
              f"retrofresh train --store {store} --out {checkpoint} --preset tiny --steps {train_steps}")
        subprocess.run([sys.executable, "-m", "flows.cli", "train", "--store", store, "--out", str(checkpoint), "--preset", "tiny",
                        "--steps", str(train_steps), "--seq-len", "256", "--eval-every", str(max(train_steps // 3, 1)),
                        "--warmup", str(min(50, train_steps // 5)), "--batch-size", "8"], check=True, stdout=subprocess.DEVNULL)

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        _step("4. Serve it", f"retrofresh serve --checkpoint {checkpoint} --store {store} --port {port}")
        log = open(workdir / "server.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--checkpoint", str(checkpoint), "--store", store,
                                   "--port", str(port), "--reload-interval", "2"], stdout=log, stderr=subprocess.STDOUT)
        client = RetroClient(url, timeout=120)
        client.wait_ready(timeout=180)
        changes = world.changed_facts(1)
        before = _ask(client, changes)
        console.print(_table(f"Before: index {before[0]['index_version']} (edition 0)", before))

        _step("5. The world changes: serve edition 1 and refresh; the flow tells the server to reload",
              f"retrofresh refresh --sources {sources} --store {store} --server {url}")
        site.set_edition(1)
        second = refresh_corpus(sources=str(sources), store=store, servers=[url])
        console.print_json(json.dumps({k: second[k] for k in ("version", "parent", "documents", "chunks_added", "chunks_removed", "seconds")}))
        deadline = time.monotonic() + 60
        while client.index().version != second["version"] and time.monotonic() < deadline:
            time.sleep(0.5)
        after = _ask(client, changes)
        console.print(_table(f"After: index {after[0]['index_version']} (edition 1), same model weights", after))

        report = {"first_refresh": first, "second_refresh": second, "before": before, "after": after,
                  "picked_up": sum(r["retrieved_new"] for r in after), "facts_changed": len(changes),
                  "seconds": round(time.monotonic() - started, 1)}
        (workdir / "demo.json").write_text(json.dumps(report, indent=2, default=str))
        _step("Done")
        console.print(f"{report['picked_up']}/{report['facts_changed']} changed facts are retrieved in their new form after one refresh, "
                      f"with no retraining ({report['seconds']} s in all). Report: {workdir / 'demo.json'}")
        console.print("bpb_old / bpb_new: how surprised the model is by each sentence after context about the entity. "
                      "A model trained for a few CPU minutes barely reads its neighbours yet; train longer "
                      "(retrofresh train --preset small, ideally on a GPU) to see it prefer what the index says.")
        if keep_running:
            console.print(f"site {site.base_url}, server {url} (admin token in RETROFRESH_ADMIN_TOKEN={token}); Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        site.stop()
