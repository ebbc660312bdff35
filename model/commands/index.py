"""``retrofresh index``: inspect and manage an index store (status, versions, search, tune, rollback, gc).

``retrofresh index compact`` publishes under the refresh lease with validation, so it is the
compaction flow's command and joins this group in ``flows/index_commands.py`` (``model`` imports
no flows).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

import click

from model.commands.formatting import one_line
from model.contracts.compat import Compatibility
from model.contracts.settings import Settings

STORE_HELP = "index store: a directory, file:///path or gs://bucket/prefix [env: RETROFRESH_STORE]."
CACHE_HELP = "local cache for GCS shards [env: RETROFRESH_CACHE_DIR; default ~/.cache/retrofresh]."


def _store_options(func):
    """--store, --cache-dir and --json, shared by every subcommand."""

    @click.option("--store", "store_uri", metavar="URI", help=STORE_HELP)
    @click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help=CACHE_HELP)
    @click.option("--json", "as_json", is_flag=True, help="print JSON for scripts instead of tables.")
    @functools.wraps(func)
    def wrapper(*args, store_uri: str | None, cache_dir: Path | None, as_json: bool, **kwargs):
        from model.store import StoreError, open_store

        settings = Settings()
        uri = store_uri or settings.store
        if not uri:
            raise click.UsageError("no store given: pass --store URI or set RETROFRESH_STORE")
        try:
            store = open_store(uri, cache_dir=cache_dir or settings.cache_dir, cache_max_bytes=settings.cache_max_bytes)
            return func(*args, store=store, as_json=as_json, **kwargs)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group()
def index() -> None:
    """Inspect and manage an index store: what is published, search it, tune recall, roll back, compact, collect garbage.

    \b
    Examples:
      retrofresh index status --store ./store
      retrofresh index search --store gs://bucket/index "who founded the city?" -k 5
      retrofresh index tune --store ./store --target 0.95
      retrofresh index rollback v000003-1a2b3c4d --store ./store
    """


# status and versions


def _summary(manifest, current: str | None = None) -> dict:
    return {
        "version": manifest.version,
        "current": manifest.version == current,
        "parent": manifest.parent,
        "created_at": manifest.created_at.isoformat(),
        "documents": manifest.stats.documents,
        "chunks": manifest.stats.chunks,
        "shards": len(manifest.shards),
        "tombstones": len(manifest.tombstones),
        "bytes": manifest.stats.bytes,
        "watermark": manifest.watermark.isoformat() if manifest.watermark else None,
    }


@index.command()
@_store_options
def status(store, as_json: bool) -> None:
    """Show the published (CURRENT) version: size, freshness, shards and what made its keys."""
    manifest = store.manifest()
    info = _summary(manifest, manifest.version) | {
        "store": store.uri,
        "embedder": manifest.embedder.to_dict(),
        "tokenizer": manifest.tokenizer.to_dict(),
        "chunk_tokens": manifest.chunk_tokens,
        "continuation_tokens": manifest.continuation_tokens,
        "search": manifest.search.model_dump(),
        "sources": manifest.sources,
        "ledger": manifest.ledger,
        "shard_list": [s.model_dump() for s in manifest.shards],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{store.uri} — CURRENT is {manifest.version}", show_header=False)
    for key in ("version", "parent", "created_at", "watermark", "documents", "chunks", "tombstones", "shards"):
        table.add_row(key, str(info[key]))
    table.add_row("size", _size(manifest.stats.bytes))
    table.add_row("embedder", f"{manifest.embedder.name} (dim {manifest.embedder.dim})")
    table.add_row("tokenizer", manifest.tokenizer.name)
    table.add_row("search", f"nprobe {manifest.search.nprobe} (`retrofresh index tune` measures recall)")
    table.add_row("sources", ", ".join(manifest.sources) or "-")
    console.print(table)
    shards = Table("chunks", "index", "lineage", "size", title="shards")
    shards.columns.insert(0, _column("shard"))
    for s in manifest.shards:
        shards.add_row(s.id, str(s.count), s.factory, s.lineage or "-", _size(s.bytes))
    console.print(shards)


@index.command()
@_store_options
def versions(store, as_json: bool) -> None:
    """List every written version, oldest first; the published one is marked."""
    from model.store import DamagedCurrent

    try:
        current = store.current()
    except DamagedCurrent as damage:  # the listing is what the repair needs: show it, say why none is marked
        click.echo(f"Warning: {damage}", err=True)
        current = None
    rows = [_summary(m, current) for m in store.versions()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("", title=store.uri)
    table.columns.append(_column("version"))
    for name in ("parent", "created", "docs", "chunks", "shards", "deleted"):
        table.add_column(name)
    for r in rows:
        table.add_row("*" if r["current"] else "", r["version"], r["parent"] or "-", _when(r["created_at"]),
                      str(r["documents"]), str(r["chunks"]), str(r["shards"]), str(r["tombstones"]))
    Console().print(table if rows else f"{store.uri} has no versions yet")


# search


@index.command()
@click.argument("text")
@click.option("-k", "k", type=click.IntRange(min=1, max=1000), default=5, show_default=True, help="neighbours to show.")
@click.option("--version", "version", metavar="VERSION", help="search this version instead of CURRENT.")
@click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="local encoder directory, if the version was not made with the bundled all-MiniLM-L6-v2.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="the query embedder's: fp32, bf16 (autocast) or auto, bf16 where this machine runs it faster "
                   "[RETROFRESH_PRECISION, default auto]; the server embeds queries the same way.")
@_store_options
def search(store, as_json: bool, text: str, k: int, version: str | None, embedder_path: Path | None, precision: str | None) -> None:
    """Embed TEXT with the version's embedder and print the nearest chunks with url and score."""
    from transformers.utils import logging as hf_logging

    from model.contracts.embedder import Embedder

    hf_logging.disable_progress_bar()  # keep stderr quiet for scripts reading --json
    manifest = store.manifest(version)
    spec = manifest.embedder
    # Keys embedded in either precision may share a store (model.contracts.compat.EmbedderSpec), so this is a speed choice only.
    embedder = Embedder(embedder_path, name=spec.name if embedder_path else None, max_length=spec.max_length,
                        precision=precision or Settings().precision)
    Compatibility.of(embedder=embedder.spec, source="the embedder here", kind="run").check(
        Compatibility.of_manifest(manifest), terms=("embedder",), fix="pass --embedder DIR with the encoder that made the index",
        error=click.ClickException,
    )
    with store.open(manifest.version, embedder=embedder.spec) as view:
        hits = view.search(embedder.encode([text]), k)[0]
    if as_json:
        click.echo(json.dumps([
            {"chunk_id": h.chunk_id, "doc_id": h.doc_id, "url": h.url, "score": h.score, "text": h.text,
             "position": h.position, "version": h.version}
            for h in hits
        ], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "score", "url", "text", title=f"{len(hits)} nearest chunks in {manifest.version}")
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.3f}", h.url, one_line(h.text))
    Console().print(table)


# recall


@index.command()
@click.option("--version", "version", metavar="VERSION", help="tune this version instead of CURRENT.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="least recall@k against exact search.")
@click.option("-k", "k", type=click.IntRange(min=1, max=100), default=2, show_default=True, help="neighbours per query.")
@click.option("--queries", type=click.IntRange(min=10), default=200, show_default=True,
              help="the version's own keys sampled as queries.")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="publish the tuned version when the measured one is CURRENT (else it is written as a draft).")
@_store_options
def tune(store, as_json: bool, version: str | None, target: float, k: int, queries: int, publish: bool) -> None:
    """Measure a version's recall@k against exact search and record the smallest nprobe meeting TARGET.

    Queries are a seeded sample of the version's own keys; exact search probes every IVF list. A
    different nprobe is written as a new version (same shards and tombstones, tuned `search`,
    parent = the measured version), published when the measured version is CURRENT. Refreshes
    tune every version they publish; this is for versions published before, or another target.
    """
    manifest = store.manifest(version)
    result = store.tune(manifest.version, target=target, k=k, queries=queries)
    tuned, published = None, False
    if result.nprobe != manifest.search.nprobe:
        tuned = manifest.retuned(version=store.new_version_id(), nprobe=result.nprobe, parent=manifest.version)
        current = store.current()
        if publish and current == manifest.version:
            store.publish(tuned, expected_current=current)
            published = True
        else:
            store.write_manifest(tuned)
    info = {"version": manifest.version, "nprobe_before": manifest.search.nprobe, "tuned_version": tuned.version if tuned else None,
            "published": published} | result.summary()
    if as_json:
        click.echo(json.dumps(info))
        return
    verdict = "meets" if result.met else "misses"
    click.echo(f"{manifest.version}: nprobe {result.nprobe} gives recall@{k} {result.recall:.3f} vs exact ({verdict} {target}; "
               f"{result.queries} queries, {result.seconds:.1f}s)")
    for nprobe, recall in result.curve:
        click.echo(f"  nprobe {nprobe:>5}: recall@{k} {recall:.3f}")
    if tuned is None:
        click.echo(f"nprobe {manifest.search.nprobe} is already the smallest that meets it; nothing written")
    else:
        state = "published" if published else "written as a draft (publish it with `retrofresh index rollback`)"
        click.echo(f"nprobe {manifest.search.nprobe} -> {result.nprobe}: {tuned.version} {state}")


# changing what is served


@index.command()
@click.argument("version")
@_store_options
def rollback(store, as_json: bool, version: str) -> None:
    """Publish an older VERSION again (its files are verified first); also repairs a damaged CURRENT."""
    from model.store import DamagedCurrent

    try:
        store.current()
        damaged = None
    except DamagedCurrent as damage:
        damaged = damage.raw
    # A compare-and-swap against what CURRENT holds now, damaged bytes included.
    previous = store.rollback(version)
    if as_json:
        click.echo(json.dumps({"previous": previous, "current": version} | ({"repaired": damaged.decode("utf-8", "replace")} if damaged is not None else {})))
    else:
        click.echo(f"CURRENT: {previous if damaged is None else f'damaged ({damaged[:80]!r})'} -> {version}")


@index.command()
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True, help="newest versions to keep.")
@click.option("--min-age", "min_age_s", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="seconds an unreferenced file must have existed before it is deleted.")
@click.option("--dry-run", is_flag=True, help="only list what would be deleted.")
@_store_options
def gc(store, as_json: bool, keep: int, min_age_s: float, dry_run: bool) -> None:
    """Delete versions beyond the newest KEEP and files no kept version uses (CURRENT's are always kept)."""
    deleted = store.gc(keep, min_age_s=min_age_s, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "deleted": deleted}))
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(deleted)} files")
    for key in deleted:
        click.echo(f"  {key}")


# formatting


def _column(header: str):
    """A column that never wraps or truncates an id (other columns give way)."""
    from rich.table import Column

    return Column(header, no_wrap=True, min_width=16)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")
