"""``retrofresh demo``: the whole system on the sample world, end to end, on this machine.

It serves edition 0 of the sample world, refreshes an empty store from it (the Prefect flow, the
Beam job in-process), serves a small RETRO model over that version, asks it about the facts
edition 1 will change, serves edition 1, refreshes again (the server is told to reload) and asks
the same questions: with the same weights, the model now prefers and writes the new values,
because it reads them in what it retrieves (flows/_factcheck.py says how it is asked).

The model is the one shipped in ``model/assets/demo-checkpoint`` (trained on other worlds' edition
0, so it knows none of these facts), or one trained on the spot with ``--train``. Every step prints
the command a user would run to do it by hand; a failed step says which one and why.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table

import model
from flows._factcheck import FactCheck, ask_facts, plot_facts, report_markdown
from model.server.ports import free_port

console = Console()

SHIPPED_CHECKPOINT = Path(model.__file__).parent / "assets" / "demo-checkpoint"
# How the shipped checkpoint was trained (README, "The demo's model"): other worlds' edition 0.
TRAIN_SEEDS = "1-60"
TRAIN_RECIPE = ["--preset", "mini", "--seq-len", "256", "--batch-size", "8", "--lr", "1e-3", "--warmup", "100",
                "--own-passage-rate", "0.5", "--neighbour-dropout", "0.1"]
TRAIN_STEPS = 1200


# The demo owns only what it writes in its workdir, and only in a workdir it made (the marker).
WORKDIR_MARKER = ".retrofresh-demo"
WORKDIR_ENTRIES = ("store", "sources.yaml", "cache", "server.log", "train-corpus.jsonl", "checkpoint", "train-store")


def _prepare_workdir(workdir: Path) -> None:
    """Create the workdir, or clear what an earlier demo wrote in it; never delete anything else.

    Raises:
        click.ClickException: ``workdir`` is a file, or a non-empty directory without the demo's marker.
    """
    if workdir.exists() and not workdir.is_dir():
        raise click.ClickException(f"--workdir {workdir} is a file; give the demo a new or empty directory")
    if workdir.is_dir() and not (workdir / WORKDIR_MARKER).is_file() and any(workdir.iterdir()):
        raise click.ClickException(
            f"--workdir {workdir} is not empty and was not made by `retrofresh demo` (it has no {WORKDIR_MARKER} file); "
            "the demo clears what it wrote in its workdir each run, so give it a new or empty directory. Nothing was deleted"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / WORKDIR_MARKER).write_text("made by `retrofresh demo`, which clears what it wrote here on its next run: "
                                          + ", ".join(WORKDIR_ENTRIES) + "\n")
    for name in WORKDIR_ENTRIES:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _check_checkpoint(checkpoint: Path) -> dict:
    """The checkpoint's config.json, refusing a damaged checkpoint before any step runs (milliseconds)."""
    from model.network.checkpoint import check_checkpoint

    try:
        return check_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"--checkpoint {checkpoint}: {exc}") from None


def _serve(checkpoint: Path, store: str, port: int, log_path: Path, *, timeout_s: float = 180.0):
    """Start ``retrofresh serve`` and wait until it is ready; if it exits first, fail at once with its log's end.

    Returns:
        ``(process, client)``.

    Raises:
        model.waiting.ProcessExited: the server exited while starting (the message holds the end of its log).
        model.waiting.WaitTimeout: not ready within ``timeout_s``.
    """
    from model.client import RetroClient, RetroError
    from model.waiting import tail, wait_for

    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--checkpoint", str(checkpoint), "--store", store,
                                   "--port", str(port), "--reload-interval", "2"], stdout=log, stderr=subprocess.STDOUT)
    client = RetroClient(f"http://127.0.0.1:{port}", timeout=120)

    def ready():
        try:
            return client.ready().ready
        except RetroError:  # not listening yet
            return False

    try:
        wait_for(ready, timeout=timeout_s, interval=0.2, what=f"the server was ready (its log, {log_path})", alive=server,
                 log=lambda: tail(log_path))
    except BaseException:
        server.terminate()
        server.wait(timeout=30)
        raise
    return server, client


@contextmanager
def _step(number: int, title: str, command: str | None = None):
    """Print a step's title and command, time it, and name it when it fails."""
    console.rule(f"[bold]{number}. {title}")
    if command:
        console.print(f"[dim]$ {command}[/dim]")
    started = time.monotonic()
    try:
        yield
    except (click.ClickException, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise click.ClickException(f"step {number} ({title}) failed: {type(exc).__name__}: {exc}") from exc
    console.print(f"[dim]step {number} took {time.monotonic() - started:.1f} s[/dim]")


def _write_sources(path: Path, base_url: str) -> None:
    # The sample site is on 127.0.0.1, which the fetcher refuses unless a source names its network.
    path.write_text(
        "fetch:\n"
        "  crawl_delay_s: 0      # our own loopback site; keep the default (1 s) for real hosts\n"
        "sources:\n"
        "  - kind: site\n"
        "    name: sample\n"
        f'    start_urls: ["{base_url}/"]\n'
        '    allow_networks: ["127.0.0.0/8"]\n'
    )


def _train(workdir: Path, steps: int) -> Path:
    """Train a model as the shipped one was (other worlds' edition 0, the neighbour mix)."""
    corpus, out = workdir / "train-corpus.jsonl", workdir / "checkpoint"
    python = [sys.executable, "-m", "flows.cli"]
    subprocess.run([*python, "site", "corpus", "--seeds", TRAIN_SEEDS, "--out", str(corpus)], check=True)
    subprocess.run([*python, "train", "--input", str(corpus), "--store", str(workdir / "train-store"), "--out", str(out),
                    *TRAIN_RECIPE, "--steps", str(steps), "--eval-every", str(max(steps // 4, 1))], check=True, stdout=subprocess.DEVNULL)
    return out


def _table(title: str, check: FactCheck) -> Table:
    """Before and after side by side: log p(new) − log p(old), what greedy decoding wrote, what was read."""
    table = Table(title=title, caption="Δ = log p(new) − log p(old), nats: positive prefers the new value")
    for column in ("fact", "old → new", "before: Δ, wrote", "after: Δ, wrote", "after: read"):
        table.add_column(column, overflow="fold")
    for b, a in zip(check.before, check.after):
        read = urlsplit(a.neighbours[0].split(": ", 1)[0]).path if a.neighbours else "-"
        table.add_row(a.fact, f"{a.old} → {a.new}", f"{b.margin:+.1f} {b.generated.strip()!r}", f"{a.margin:+.1f} {a.generated.strip()!r}", read)
    return table


def _chunking_tokenizer(checkpoint: Path, config: dict) -> Path | None:
    """The checkpoint itself when its tokenizer is not the bundled one (a RETRO-fitted model), so the
    store is chunked in the model's own tokens and the server accepts it; None for the bundled one."""
    from model.contracts.tokenizer import RetroTokenizer

    recorded = (config.get("tokenizer") or {}).get("sha256")
    return None if recorded is None or recorded == RetroTokenizer.load(None).sha256 else checkpoint


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo"), show_default=True,
              help="where the store, the server's log and the caches go (emptied first)")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"), show_default=True,
              help="where report.md, facts.png and demo.json go")
@click.option("--size", type=click.IntRange(min=1), default=2, show_default=True, help="sample world size (entities scale with it)")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="the RETRO model to serve [default: the shipped model/assets/demo-checkpoint]")
@click.option("--train", "train_model", is_flag=True,
              help=f"train the model here first, as the shipped one was ({TRAIN_STEPS} steps on worlds {TRAIN_SEEDS}; ~20 min on 2 cores)")
@click.option("--train-steps", type=click.IntRange(min=1), default=TRAIN_STEPS, show_default=True, help="steps for --train")
@click.option("--check", is_flag=True, help="exit with an error unless the model's answers follow the index (what CI runs)")
@click.option("--keep-running", is_flag=True, help="leave the site and server up at the end (Ctrl-C stops them)")
def demo(workdir: Path, out_dir: Path, size: int, checkpoint: Path | None, train_model: bool, train_steps: int, check: bool,
         keep_running: bool) -> None:
    """Run the whole pipeline on the bundled sample world and show a served model follow its index.

    Takes a few minutes on 2 CPU cores; nothing is downloaded.
    """
    started = time.monotonic()
    tokenizer = None
    if not train_model:  # found out now, not after the first refresh
        checkpoint = checkpoint or SHIPPED_CHECKPOINT
        config = _check_checkpoint(checkpoint)
        tokenizer = _chunking_tokenizer(checkpoint, config)
    tokenizer_flag = f" --tokenizer {tokenizer}" if tokenizer else ""
    _prepare_workdir(workdir)
    # Imported after the checks: Prefect and Beam take seconds to import, a refusal should not wait for them.
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld
    from flows.refresh import refresh_corpus

    out_dir.mkdir(parents=True, exist_ok=True)
    store, sources = str(workdir / "store"), workdir / "sources.yaml"
    token = secrets.token_urlsafe(16)
    os.environ["RETROFRESH_ADMIN_TOKEN"] = token  # the refresh flow reads it to call /admin/reload
    os.environ["RETROFRESH_CACHE_DIR"] = str(workdir / "cache")

    world = SampleWorld(seed=0, size=size)
    changes = world.changed_facts(1)
    site = SampleSiteServer(world, 0).start()
    server = None
    try:
        _write_sources(sources, site.base_url)
        with _step(1, "Sample world, edition 0", f"retrofresh site serve --edition 0 --port {site.port}"):
            console.print(f"serving {len(site.edition.document_paths())} documents at {site.base_url}; "
                          f"edition 1 will change {len(changes)} facts")

        with _step(2, "Refresh an empty store from it (Prefect flow → Beam ingest → publish)",
                   f"retrofresh refresh --sources {sources} --store {store}{tokenizer_flag}"):
            first = refresh_corpus(sources=str(sources), store=store, tokenizer_path=str(tokenizer) if tokenizer else None)
            console.print_json(json.dumps({k: first[k] for k in ("version", "documents", "chunks_added", "seconds")}))

        if train_model:
            with _step(3, f"Train a RETRO model on other worlds' edition 0 ({train_steps} steps)",
                       f"retrofresh site corpus --seeds {TRAIN_SEEDS} --out corpus.jsonl && retrofresh train --input corpus.jsonl "
                       f"{' '.join(TRAIN_RECIPE)} --steps {train_steps} --out CHECKPOINT"):
                checkpoint = _train(workdir, train_steps)
        else:
            with _step(3, "The model: a small RETRO network trained on other worlds' edition 0"):
                console.print(f"{checkpoint}: d_model {config['d_model']}, {config['n_layers']} layers, CCA at {config['cca_layers']}, "
                              f"k={config['k']}; it has never seen this world's facts (README, \"The demo's model\")")

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with _step(4, "Serve it over the first version", f"retrofresh serve --checkpoint {checkpoint} --store {store} --port {port}"):
            server, client = _serve(checkpoint, store, port, workdir / "server.log")
            served = client.index()
            if served.version != first["version"] or not served.retrieval:
                # The server checks the checkpoint's tokenizer, embedder and chunk size against the version's.
                raise RuntimeError(f"the server does not retrieve from {first['version']}: {served.last_error or 'no version loaded'} "
                                   f"(see {workdir / 'server.log'})")

        with _step(5, "Ask the served model about the facts edition 1 will change"):
            before = ask_facts(client, world, changes)

        with _step(6, "The world changes: serve edition 1 and refresh; the flow tells the server to reload",
                   f"retrofresh refresh --sources {sources} --store {store} --server {url}{tokenizer_flag}"):
            changed_at = time.monotonic()
            site.set_edition(1)
            second = refresh_corpus(sources=str(sources), store=store, servers=[url], tokenizer_path=str(tokenizer) if tokenizer else None)
            console.print_json(json.dumps({k: second[k] for k in ("version", "parent", "documents", "chunks_added", "chunks_removed", "seconds")}))
            lag_s = _first_answer_from(client, second["version"], since=changed_at)
            console.print(f"freshness lag: {lag_s:.1f} s from the site's change to the first answer served from {second['version']}")

        with _step(7, "Ask again: same weights, new index (and once more with retrieval off, as a control)"):
            after = ask_facts(client, world, changes)
            control = ask_facts(client, world, changes, retrieval=False)
            facts = FactCheck(before, after, control)
            console.print(_table(f"index {first['version']} → {second['version']}", facts))

        with _step(8, f"Write the report to {out_dir}"):
            summary = {**facts.to_dict(), "freshness_lag_s": round(lag_s, 2), "versions": [first["version"], second["version"]],
                       "checkpoint": str(checkpoint), "first_refresh": first, "second_refresh": second,
                       "seconds": round(time.monotonic() - started, 1)}
            (out_dir / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
            (out_dir / "facts.png").write_bytes(plot_facts(facts))
            (out_dir / "report.md").write_text(report_markdown(facts, lag_s=lag_s, versions=(first["version"], second["version"])))

        c, n = facts.counts(), facts.facts_changed
        console.rule("[bold]Done")
        console.print(f"Of {n} changed facts, the model preferred the old value for {c['prefer_old_before']} before the refresh and the new "
                      f"value for {c['prefer_new_after']} after it; it wrote the new value for {c['generated_new_after']} "
                      f"(with retrieval off: {c['control_prefer_new']} and {c['control_generated_new']}). Same weights, "
                      f"{summary['seconds']} s in all. Report: {out_dir / 'report.md'}")
        if check and not facts.passed:
            raise click.ClickException("the model's answers did not follow the index: " + "; ".join(facts.failures()))
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


def _first_answer_from(client, version: str, *, since: float, timeout_s: float = 60.0) -> float:
    """Seconds from ``since`` until the server first answers a request from ``version``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if client.retrieve("freshness probe", k=1).index_version == version:
            return time.monotonic() - since
        if time.monotonic() > deadline:
            raise TimeoutError(f"the server still answers from an older version {timeout_s:.0f} s after the refresh published {version}")
        time.sleep(0.1)
