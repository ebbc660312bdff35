"""``retrofresh index``: the store commands of ``model/commands/index.py``, plus ``compact``, which runs
the compaction flow (``flows/compact.py``).

A compaction publishes, so it must hold the refresh lease and validate what it publishes, as a
refresh does; one implementation does that for the schedule and for the command line alike, so no
command can publish around the lease. ``model`` imports no flows, hence the group is completed here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from model.commands.index import STORE_HELP, index


@index.command("compact")
@click.option("--store", "store_uri", metavar="URI", help=STORE_HELP)
@click.option("--publish/--no-publish", default=True, show_default=True, help="publish the compacted version (else it stays a draft).")
@click.option("--min-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="compact only when CURRENT has at least this many shards (1: also rewrite a single old-layout shard).")
@click.option("--probe-queries", type=click.IntRange(min=0), default=16, show_default=True,
              help="chunks the validation searches for (0: no probe; needs the encoder that made the keys).")
@click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="local encoder directory, if the store was not made with the bundled all-MiniLM-L6-v2.")
@click.option("--server", "servers", multiple=True, help="server URL to tell to reload (repeatable) [env RETROFRESH_SERVERS].")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts instead of a sentence.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="append the run's whole log here, tracebacks included [default: <cache dir>/logs/compact.log]")
@click.option("--verbose", is_flag=True, help="show tracebacks on the terminal too (they always go to the log file)")
def compact(store_uri, publish, min_shards, probe_queries, embedder_path, servers, as_json, log_file, verbose) -> None:
    """Merge the CURRENT version's shards and drop deleted chunks; the answers stay the same.

    Runs the compaction flow: takes the store's refresh lease (fails at once, changing nothing,
    while a refresh holds it), validates the compacted version (checksums, counts, recall tuning, a
    probe search), then publishes it and tells --server to reload.
    """
    from flows.common.runlog import default_log_file, failure_message, flow_result, run_log
    from flows.common.temporary_api import prefect_api
    from flows.compact import compact_index

    log_file = log_file or default_log_file("compact")
    start = time.perf_counter()
    try:
        # Without PREFECT_API_URL: a temporary API that stops with this process.
        with prefect_api(), run_log(log_file, verbose=verbose):
            result = flow_result(compact_index(
                store=store_uri, min_shards=min_shards, servers=list(servers) or None, probe_queries=probe_queries,
                embedder_path=str(embedder_path) if embedder_path else None, publish=publish, return_state=True,
            ))
    except Exception as error:  # noqa: BLE001 - report the flow's cause, whatever it was
        raise click.ClickException(failure_message("compaction", error, log_file, verbose=verbose)) from error
    if result["parent"] is None:
        raise click.ClickException("the store has no CURRENT version yet: nothing to compact (publish one first with `retrofresh refresh`)")
    info = {**result, "chunks": result.get("live_chunks"), "seconds": round(time.perf_counter() - start, 3)}
    if as_json:
        click.echo(json.dumps(info))
        return
    if not result["compacted"]:
        click.echo(f"{result['parent']} has {result['shards_before']} shards, fewer than --min-shards {min_shards}: nothing to compact")
        return
    state = "published" if publish else "written as a draft (publish it with `retrofresh index rollback`)"
    click.echo(f"{result['parent']} -> {result['version']} {state}: {result['shards_before']} shards -> {result['shards_after']}, "
               f"{info['chunks']} live chunks, in {info['seconds']:.1f}s")
