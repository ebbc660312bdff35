"""Ingest job speed on the sample world: embedding inside Beam vs a plain loop, incremental vs full.

(a) ``embed_ratio_vs_plain``: chunks/s of the job's embedding step (RunInference with the job's
    ModelHandler, in a Beam pipeline on the in-process runner, fed from memory as the job's
    upstream ChunkDoFn feeds it; Beam's own overhead included, the model load, which RunInference
    reports, left out) over chunks/s of a plain sentence-transformers
    ``encode`` loop over the same chunk texts (its model load also left out; the ratio with loads
    is reported too). The two run alternately over slices of the chunks (the machine is shared),
    each in a fresh process.
    Both precisions are timed side by side (``model.contracts.precision``: fp32, and bf16 autocast for the
    job's Embedder and for sentence-transformers alike): ``embed_by_precision`` compares the two
    loops at the same precision, ``embed_best`` each at its best; the top-level ``embed_*`` keys
    are at ``default_precision``, what ``auto`` (the ingest's default) picks on this machine.
(b) ``incremental_vs_full``: wall time of an ingest of edition 1 on top of edition 0's published
    version (about 1% of documents new, changed or removed) over a full ingest of edition 1 into
    an empty store. Both crawl the same site served from this process.
(c) ``dask``: the full ingest of edition 1 again, on a Dask cluster of DASK_WORKERS single-threaded
    worker processes on loopback (``runner="dask"``, beam_jobs/dask_runner.py), against the
    in-process runner's full ingest of (a): the same documents, chunks and chunk ids, and the
    wall time of each (both pay their encoder loads: each worker process loads its own).

    python -m bench.ingest [--quick] [--json] [--no-dask | --dask-only]

Writes bench/results/ingest.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, write_result

# knobs
SIZE = 260  # sample world scale: ~20,000 chunks, ~4,500 documents
SEED = 0
TARGET_CHANGED = 0.01  # share of documents new, changed or removed between the two editions
DOCS_CHANGED_PER_FACT = 5.5  # documents one fact change touches (profile, index, news in/out, ...)
EMBED_BATCH = 64  # batch size for both the Beam handler and the plain loop
EMBED_SLICES = 4  # the embedding comparison alternates Beam and plain over this many slices
PRECISIONS = ("fp32", "bf16")  # the embedding comparison runs at each
EMBED_CHUNKS = None  # chunks the embedding comparison runs on, at each precision (None: all)
# ~2,000 chunks; the embedding comparison on 640 of them, as it runs twice (fp32, bf16) and bf16
# runs ~2.5x slower than fp32 on a CPU without bf16 instructions.
DASK_WORKERS = 2  # worker processes of the Dask row, one thread each
QUICK = dict(SIZE=26, EMBED_SLICES=2, EMBED_CHUNKS=640)

RESULT = Path(__file__).parent / "results" / "ingest.json"


def sources_for(base_url: str):
    from beam_jobs.sources import SourcesConfig

    return SourcesConfig.model_validate(
        {
            "fetch": {"crawl_delay_s": 0, "timeout_s": 10, "retries": 1, "backoff_s": 0.05},
            "sources": [{"kind": "site", "name": "sample", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"], "max_pages": 1_000_000}],
        }
    )


def make_world(size: int):
    """A world whose consecutive editions differ in about TARGET_CHANGED of their documents."""
    from beam_jobs.sample.world import SampleWorld

    probe = SampleWorld(SEED, size, changes_per_edition=1)
    documents = len(probe.edition(0).document_paths())
    changes = max(1, round(TARGET_CHANGED * documents / DOCS_CHANGED_PER_FACT))
    return SampleWorld(SEED, size, changes_per_edition=changes)


def timed_ingest(config, store_uri: str):
    from beam_jobs.ingest import run_ingest

    started = time.perf_counter()
    result = run_ingest(config, store_uri, embed_batch_size=EMBED_BATCH, precision="auto")
    return result, time.perf_counter() - started


# The chunks embed_in_beam feeds to Beam, set in the measuring process and read there by the
# in-process runner. A Create would encode every chunk, pickle the lot into the pipeline graph
# with bz2 (level 9) and decode it again inside the timing (~0.07 s per 1,000 chunks): work the
# job never does, its chunks come from the upstream ChunkDoFn in the same fused stage.
_CHUNKS: list = []


def _bench_chunks(_):
    yield from _CHUNKS


def chunk_ids(store_uri: str, version: str) -> set[int]:
    from model.store import open_store

    with open_store(store_uri).open(version) as view:
        return {row["chunk_id"] for batch in view.iter_chunks() for row in batch.to_pylist()}


def dask_row(config, tmp: str, local: "object", local_s: float) -> dict:
    """The full ingest on a loopback Dask cluster of DASK_WORKERS processes, against the in-process one."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster:
        from beam_jobs.ingest import run_ingest

        started = time.perf_counter()
        result = run_ingest(config, f"{tmp}/dask", runner="dask", pipeline_args=[f"--dask_client_address={cluster.scheduler_address}"],
                            embed_batch_size=EMBED_BATCH, precision="auto")
        dask_s = time.perf_counter() - started
    same = chunk_ids(f"{tmp}/dask", result.version) == chunk_ids(f"{tmp}/full", local.version)
    return {
        "workers": DASK_WORKERS,
        "documents": {"dask": result.metrics["new"], "in_process": local.metrics["new"]},
        "chunks": {"dask": result.chunks_added, "in_process": local.chunks_added},
        "same_chunk_ids": same,
        "full_ingest_s": {"dask": round(dask_s, 2), "in_process": round(local_s, 2)},
        "dask_vs_in_process": round(dask_s / local_s, 3),
        "note": "each side's first ingest in its processes (imports, encoder loads included); a shared 2-core machine",
    }


def embed_in_beam(texts: list[str], precision: str) -> tuple[float, float]:
    """(wall seconds, model-load seconds) of a pipeline that embeds the texts with the job's handler."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    import bench.ingest as this  # by its importable name: Beam pickles functions of __main__ by value
    from beam_jobs.embed import ChunkEmbeddingHandler
    from model.contracts.chunking import Chunk

    this._CHUNKS[:] = [Chunk(i, "bench", i, [], [], text, "bench") for i, text in enumerate(texts)]
    import torch  # noqa: F401  imported before timing, as the plain loop's import does
    import transformers  # noqa: F401
    from transformers import AutoModel, AutoTokenizer  # noqa: F401  lazy submodules: ~1.7 s, sentence_transformers' import pays them

    # A first pipeline in a fresh process pays one-time imports (runner, gRPC): keep them out.
    with beam.Pipeline(options=PipelineOptions([], runner="FnApiRunner")) as warm:
        _ = warm | beam.Create([0]) | beam.Map(lambda x: x)
    handler = ChunkEmbeddingHandler(None, encode_batch_size=EMBED_BATCH, min_batch_size=4 * EMBED_BATCH, max_batch_size=16 * EMBED_BATCH,
                                    precision=precision)
    started = time.perf_counter()
    pipeline = beam.Pipeline(options=PipelineOptions([], runner="FnApiRunner"))
    _ = pipeline | beam.Impulse() | "Chunks" >> beam.FlatMap(this._bench_chunks) | RunInference(handler) | beam.combiners.Count.Globally()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - started
    loads = result.metrics().query(MetricsFilter().with_namespace(handler.get_metrics_namespace()).with_name("load_model_latency_milli_secs"))
    return wall, sum(d.committed.sum for d in loads["distributions"]) / 1000


def embed_plain(texts: list[str], precision: str) -> tuple[float, float]:
    """(wall seconds, model-load seconds) for sentence-transformers to load the model and encode the texts."""
    from sentence_transformers import SentenceTransformer

    from model.contracts.embedder import default_embedder_path
    from model.contracts.precision import autocast

    started = time.perf_counter()
    model = SentenceTransformer(str(default_embedder_path()), device="cpu")
    loaded = time.perf_counter()
    with autocast(precision, "cpu"):  # the same bf16 autocast the job's Embedder runs under
        model.encode(texts, batch_size=EMBED_BATCH, normalize_embeddings=True, show_progress_bar=False)
    return time.perf_counter() - started, loaded - started


def in_fresh_process(function, *args):
    """Run a measurement in a new interpreter: neither loop inherits the other's torch thread
    pools, allocator state or warm caches (and the parent's two ingest pipelines)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2,000 chunks instead of ~20,000")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask row (needs the dask extra)")
    parser.add_argument("--dask-only", action="store_true",
                        help="only (c): the in-process and the Dask full ingest; its row replaces the 'dask' entry of the results file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    knobs = dict(SIZE=SIZE, EMBED_SLICES=EMBED_SLICES, EMBED_CHUNKS=EMBED_CHUNKS, DASK=not args.no_dask) | (QUICK if args.quick else {})
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))

    import torch

    from beam_jobs.sample.server import SampleSiteServer
    from model.contracts.precision import cpu_bf16_flags, resolve
    from model.store import open_store

    world = make_world(knobs["SIZE"])
    say(f"world: size {knobs['SIZE']}, {len(world.edition(0).document_paths())} documents, {world.changes_per_edition} facts change per edition")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, SampleSiteServer(world, 1) as site:
        config = sources_for(site.base_url)
        full, full_s = timed_ingest(config, f"{tmp}/full")
        say(f"full ingest of edition 1: {full_s:.1f} s, {full.chunks_added} chunks, {full.metrics['new']} documents")
        if args.dask_only:
            row = dask_row(config, tmp, full, full_s) | {"size": knobs["SIZE"], "quick": args.quick,
                                                        "machine": machine()}
            result = json.loads(RESULT.read_text()) if RESULT.exists() else {}
            write_result(RESULT, result | {"dask": row}, as_json=args.json, indent=1)
            return

        site.set_edition(0)
        base, base_s = timed_ingest(config, f"{tmp}/incremental")
        open_store(f"{tmp}/incremental").publish(base.version, expected_current=None)
        site.set_edition(1)
        incremental, incremental_s = timed_ingest(config, f"{tmp}/incremental")
        m = incremental.metrics
        touched = m["new"] + m["changed"] + m["deleted"]
        say(f"incremental ingest of edition 1 over 0: {incremental_s:.1f} s, {touched} documents touched, {incremental.chunks_added} chunks embedded")

        with open_store(f"{tmp}/full").open(full.version) as view:
            texts = [row["text"] for batch in view.iter_chunks() for row in batch.to_pylist()]
        dask = dask_row(config, tmp, full, full_s) if knobs["DASK"] else None
        if dask:
            say(f"dask: full ingest of edition 1 on {DASK_WORKERS} workers {dask['full_ingest_s']['dask']} s vs in-process {full_s:.1f} s, "
                f"same chunk ids: {dask['same_chunk_ids']}")
    chunks = len(texts)
    texts = texts[: knobs["EMBED_CHUNKS"]]
    # The machine is shared: alternate the two loops and the two precisions over slices (Beam
    # fp32, plain fp32, Beam bf16, plain bf16, then reversed, ...) so that load drifting during the
    # measurement weighs on all four alike (run one precision after the other, a drop in load
    # between them made bf16 look faster than fp32).
    # Model loading is timed apart: it happens once per worker per run and is not the loop.
    totals = {(loop, precision): [0.0, 0.0] for precision in PRECISIONS for loop in (embed_in_beam, embed_plain)}  # wall, load
    order = list(totals)
    step = -(-len(texts) // knobs["EMBED_SLICES"])
    for i, start in enumerate(range(0, len(texts), step)):
        part = texts[start : start + step]
        for loop, precision in order if i % 2 == 0 else order[::-1]:
            wall, load = in_fresh_process(loop, part, precision)
            totals[loop, precision][0] += wall
            totals[loop, precision][1] += load
        say(f"slice {i + 1}: {len(part)} chunks; so far " + ", ".join(f"{loop.__name__} {p} {t}" for (loop, p), t in totals.items()) + " (wall, load s)")
    embed = {}
    for precision in PRECISIONS:
        (beam_s, beam_load), (plain_s, plain_load) = totals[embed_in_beam, precision], totals[embed_plain, precision]
        embed[precision] = {
            "embed_chunks_per_s_beam": round(len(texts) / (beam_s - beam_load), 2),
            "embed_chunks_per_s_plain": round(len(texts) / (plain_s - plain_load), 2),
            "embed_ratio_vs_plain": round((plain_s - plain_load) / (beam_s - beam_load), 3),
            "embed_ratio_vs_plain_with_model_load": round(plain_s / beam_s, 3),
            "embed_model_load_s": {"beam": round(beam_load, 2), "plain": round(plain_load, 2)},
        }
    best = {side: max(PRECISIONS, key=lambda p: embed[p][f"embed_chunks_per_s_{side}"]) for side in ("beam", "plain")}
    default = resolve("auto", "cpu")

    result = {
        "quick": args.quick,
        "size": knobs["SIZE"],
        "documents": full.metrics["new"],
        "chunks": chunks,
        "embed_chunks": len(texts),
        "default_precision": {"precision": default.precision, "bf16_speedup_probe": default.bf16_speedup},
        **embed[default.precision],
        "embed_by_precision": embed,
        "embed_best": {
            side: {"precision": p, "chunks_per_s": embed[p][f"embed_chunks_per_s_{side}"]} for side, p in best.items()
        } | {"ratio_vs_plain": round(embed[best["beam"]]["embed_chunks_per_s_beam"] / embed[best["plain"]]["embed_chunks_per_s_plain"], 3)},
        "full_ingest_s": round(full_s, 2),
        "incremental_ingest_s": round(incremental_s, 2),
        "incremental_vs_full": round(incremental_s / full_s, 4),
        "changed_fraction": round(touched / max(1, m["documents"]), 4),
        "incremental": {k: m[k] for k in ("new", "changed", "deleted", "unchanged", "not_modified", "fetched", "chunks", "tombstones")},
        "edition_0_ingest_s": round(base_s, 2),
        "dask": dask,
        "targets": {"embed_ratio_vs_plain": ">= 0.9", "incremental_vs_full": "<= 0.05 at the full size"},
        "machine": machine(torch_threads=torch.get_num_threads(), cpu_bf16_flags=list(cpu_bf16_flags())),
    }
    write_result(RESULT, result, as_json=args.json, indent=1)


if __name__ == "__main__":
    main()
