"""CLI: ``retrofresh site serve|generate|corpus`` (the sample world) and ``retrofresh ingest``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

LOG = logging.getLogger(__name__)


@click.group()
def site() -> None:
    """Generate or serve the sample world (a time-evolving website)."""


def _world_options(command):
    command = click.option("--seed", type=int, default=0, show_default=True, help="world seed")(command)
    command = click.option("--size", type=click.IntRange(min=1), default=1, show_default=True, help="world scale (pages grow linearly)")(command)
    command = click.option("--edition", type=click.IntRange(min=0), default=0, show_default=True, help="edition number (one a week)")(command)
    return command


@site.command()
@_world_options
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
def serve(seed: int, size: int, edition: int, host: str, port: int) -> None:
    """Serve one edition of the sample world over HTTP until Ctrl-C."""
    from beam_jobs.sample.server import serve as serve_site
    from beam_jobs.sample.world import SampleWorld

    logging.basicConfig(level=logging.INFO)
    try:
        serve_site(SampleWorld(seed, size), edition, host=host, port=port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc


@site.command()
@_world_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="directory to write the site into")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True, help="absolute URL prefix for sitemap, feed, robots.txt")
def generate(seed: int, size: int, edition: int, out_dir: str, base_url: str) -> None:
    """Write one edition as static files, plus facts.json (its facts and the changes since the last edition)."""
    from beam_jobs.sample.server import write_edition
    from beam_jobs.sample.world import SampleWorld

    world = SampleWorld(seed, size)
    written = write_edition(world, edition, out_dir, base_url)
    data = world.edition(edition)
    facts = {
        "seed": seed,
        "size": size,
        "edition": edition,
        "date": data.date.isoformat(),
        "documents": data.document_urls(base_url),
        "facts": [{"entity": e, "attribute": a, "value": v} for (e, a), v in sorted(data.facts_as_of.items())],
        "changes": [
            {"entity": c.entity, "attribute": c.attribute, "old": c.old, "new": c.new, "date": c.date.isoformat(),
             "sentence": c.sentence, "prompt": c.prompt, "urls": c.urls(base_url)}
            for c in data.changes
        ],
    }  # fmt: skip
    (Path(out_dir) / "facts.json").write_text(json.dumps(facts, indent=1))
    click.echo(f"wrote {written} files and facts.json for edition {edition} ({len(data.changes)} changed facts) to {out_dir}")


@site.command()
@click.option("--seeds", default="1-60", show_default=True, help="world seeds, as a range 'A-B' or a list 'A,B,C'")
@click.option("--size", type=click.IntRange(min=1), default=1, show_default=True, help="world scale of each seed")
@click.option("--edition", type=click.IntRange(min=0), default=0, show_default=True, help="edition of every seed")
@click.option("--notes/--no-notes", default=True, show_default=True,
              help="also write one note per entity: its description, then its current facts")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL file to write")
def corpus(seeds: str, size: int, edition: int, notes: bool, out_file: Path) -> None:
    """Write the documents of one edition of many worlds as JSONL (text, url, published_at), for training.

    Each page goes through the ingest's own extraction (trafilatura), so the text is what an
    ingest of the served site would store. With --notes, each entity also gets a short note (its
    description, then its facts): text whose values can only be predicted by reading another
    document of the world, the way the demo asks about facts. The demo's model is trained on
    seeds 1-60 of edition 0: worlds of the same kind as the demo's seed 0, none of which states
    any of seed 0's facts.
    """
    from beam_jobs.sample.corpus import world_documents

    chosen = _seed_list(seeds)
    written = 0
    with out_file.open("w", encoding="utf-8") as out:
        for seed in chosen:
            for document in world_documents(seed, size, edition, notes=notes):
                out.write(json.dumps(document) + "\n")
                written += 1
    click.echo(f"wrote {written} documents of {len(chosen)} worlds (size {size}, edition {edition}) to {out_file}", err=True)


def _seed_list(value: str) -> list[int]:
    try:
        if "-" in value:
            low, high = (int(part) for part in value.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a range like 1-60 or a list like 1,2,3, got {value!r}", param_hint="--seeds") from None
    if not seeds:
        raise click.BadParameter(f"{value!r} names no seed", param_hint="--seeds")
    return seeds


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--sources", "sources_file", type=click.Path(exists=True, dir_okay=False), required=True, help="sources YAML file")
@click.option("--store", default=None, help="index store (directory or gs://bucket/prefix); default RETROFRESH_STORE")
@click.option("--runner", type=click.Choice(["local", "multiprocess", "dask", "dataflow"]), default="local", show_default=True)
@click.option("--embedder", "embedder_path", default=None, help="encoder directory (default: bundled all-MiniLM-L6-v2)")
@click.option("--tokenizer", "tokenizer_path", default=None, help="tokenizer.json or checkpoint dir (default: bundled)")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="the encoder's: fp32, bf16 (autocast) or auto, bf16 where a worker runs it faster [RETROFRESH_PRECISION, default auto]")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for a Dataflow job to finish")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def ingest(sources_file, store, runner, embedder_path, tokenizer_path, precision, wait, as_json, beam_args) -> None:
    """Run the Beam ingest job once (writes a draft delta version, does not publish).

    Anything after the options is passed to Beam, e.g. ``--project P --region R
    --temp_location gs://b/tmp --sdk_container_image IMAGE`` with ``--runner dataflow``, or
    ``--dask_client_address=tcp://HOST:PORT`` with ``--runner dask``.
    """
    from beam_jobs.ingest import run_ingest
    from beam_jobs.sources import SourcesError
    from model.contracts.settings import get_settings
    from model.store.errors import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = store or get_settings().store
    if not store:
        raise click.UsageError("no store: pass --store or set RETROFRESH_STORE")
    try:
        result = run_ingest(
            sources_file, store, pipeline_args=list(beam_args), runner=runner,
            embedder_path=embedder_path, tokenizer_path=tokenizer_path, wait=wait, precision=precision,
        )  # fmt: skip
    except (SourcesError, StoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, default=str))
        return
    m = result.metrics
    click.echo(
        f"{'draft ' + result.version if result.version else 'nothing changed, no draft'} (parent {result.parent}) in {result.seconds:.1f} s: "
        f"{m['new']} new, {m['changed']} changed, {m['unchanged']} unchanged, {m['deleted']} deleted; "
        f"{result.chunks_added} chunks embedded, {result.chunks_removed} tombstones; "
        f"fetched {m['fetched']}, not modified {m['not_modified']}, robots-blocked {m['robots_blocked']}, failed {m['failed']}"
    )
    if result.dataflow_url:
        click.echo(f"Dataflow job: {result.dataflow_url}")
    sys.stdout.flush()
