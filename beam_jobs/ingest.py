"""The ingest job: sources -> one delta shard, ledger and tombstones in the store (a draft version).

    ReadLedger -> Crawl (discover + fetch; FetchTargets for a targeted run) -> Extract
    -> DiffAgainstLedger -> ChunkAndEmbed (RunInference) -> DropKeptTombstones -> WriteDelta (one worker)

Each step is a composite PTransform in its stage's module (beam_jobs/write.py, crawl.py,
targets.py, extract.py, diff.py, embed.py); ``build_pipeline`` chains them. A targeted run of a
few URLs on the local runner runs the same steps' DoFns directly, without a Beam runner
(:mod:`beam_jobs.direct`: a pipeline's construction and stages cost more than such a batch's work).

Run it in-process (``runner="local"``, Beam's FnApiRunner), with one worker process per core
(``"multiprocess"``), or on Dataflow with the standard Beam options::

    python -m beam_jobs.ingest --sources sources.yaml --store gs://bucket/index \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
        --sdk_container_image REGION-docker.pkg.dev/P/retrofresh/dataflow:TAG

The job never publishes. ``IngestResult.version`` is the draft it wrote, or None when no document
was new, changed or deleted (then nothing is written at all).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from beam_jobs import metrics
from beam_jobs.chunk import KEPT, DropKeptTombstones
from beam_jobs.crawl import Crawl
from beam_jobs.diff import LEDGER, TO_CHUNK, TOMBSTONES, DiffAgainstLedger
from beam_jobs.direct import direct_eligible, run_direct
from beam_jobs.embed import ChunkAndEmbed, ChunkEmbeddingHandler
from beam_jobs.extract import Extract
from beam_jobs.limits import held_by_source
from beam_jobs.options import IngestOptions, is_dataflow, is_dry_run, pipeline_options
from beam_jobs.sources import SourcesConfig, load_sources
from beam_jobs.targets import DEFAULT_MAX_TARGETS, FetchTargets, Targets, resolve_targets
from beam_jobs.write import DraftSpec, ReadLedger, WriteDelta
from model.contracts.clock import utcnow
from model.contracts.compat import Compatibility
from model.contracts.embedder import EmbedderSpec, embedder_spec
from model.contracts.precision import check as check_precision
from model.contracts.settings import get_settings
from model.contracts.tokenizer import RetroTokenizer
from model.store.errors import IncompatibleIndex

LOG = logging.getLogger(__name__)


class TokenizerMismatch(IncompatibleIndex):
    """The run's tokenizer is not the one the store's chunks were made with."""


class EmbedderMismatch(IncompatibleIndex):
    """The run's encoder is not the one the store's keys were made with."""


@dataclass
class IngestResult:
    """What one ingest run did.

    Attributes:
        version: the draft version written; None when nothing changed (or, with
            ``wait=False``, the version the job will write if anything changed: see ``state``).
        parent: the version it was diffed against (``CURRENT`` at launch), or None.
        metrics: counter name -> value (fetched, not_modified, robots_blocked, failed,
            failed_<reason>, gone, new, changed, unchanged, deleted, chunks, tombstones,
            documents, ...); zeros until a job that was not waited for finishes.
        chunks_added: chunks embedded into the new shard.
        chunks_removed: tombstones (old chunk ids of changed and deleted documents).
        seconds: wall time of the run (launch only, with ``wait=False``).
        job_id: Dataflow job id (None locally and for a dry run).
        dataflow_url: the job's page in the Cloud console.
        state: the Beam pipeline state at return (DONE, RUNNING, ...); for a Dataflow job that
            was followed to its end, its last state.
        dataflow_job: for a Dataflow ``--dry_run=True``: the job it would have submitted.
        refused: a targeted run's URLs that belong to no source, with why: never fetched.
        deferred: a targeted run's accepted URLs over its limit, left for the next run.
        states: every state the job was seen in, in order (``[state]`` unless it was followed).
    """

    version: str | None
    parent: str | None
    metrics: dict[str, int]
    chunks_added: int
    chunks_removed: int
    seconds: float
    job_id: str | None = None
    dataflow_url: str | None = None
    state: str = "DONE"
    dataflow_job: dict | None = field(default=None, repr=False)
    refused: list[tuple[str, str]] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [self.state]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class IngestPlan:
    """Everything fixed at launch; the pipeline carries it to the workers."""

    config: SourcesConfig
    store_uri: str
    parent: str | None
    version: str
    tokenizer_json: str
    tokenizer_name: str
    tokenizer_sha256: str
    embedder_path: str | None
    embedder: EmbedderSpec
    started_at: datetime
    embed_batch_size: int = 64
    torch_threads: int | None = None
    # "auto", "fp32" or "bf16": the workers decide "auto" on their own CPUs (model.contracts.precision).
    precision: str = "fp32"
    targets: Targets | None = None  # a targeted run: only these URLs, nothing deleted for absence


def resolve_tokenizer(tokenizer_path: str | Path | None, parent_manifest) -> RetroTokenizer:
    """The tokenizer for this run, refused if it differs from the one the store's chunks used.

    Args:
        tokenizer_path: a tokenizer.json or checkpoint directory; None for the bundled default.
        parent_manifest: the store's current Manifest, or None for an empty store.

    Returns:
        The tokenizer.

    Raises:
        TokenizerMismatch: the parent version records another tokenizer (name or sha256).
    """
    tokenizer = RetroTokenizer.load(tokenizer_path)
    if parent_manifest is not None:
        run = f"this run ({'the bundled default tokenizer' if tokenizer_path is None else f'tokenizer from {tokenizer_path}'})"
        Compatibility.of(tokenizer=tokenizer, source=run, kind="run").check(
            _parent_terms(parent_manifest), terms=("tokenizer",), error=TokenizerMismatch,
            fix="pass --tokenizer with the store's tokenizer, or ingest into a new, empty store",
        )
    return tokenizer


def _parent_terms(parent_manifest) -> Compatibility:
    return Compatibility.of_manifest(parent_manifest, source=f"the store's version {parent_manifest.version}")


def check_embedder(spec: EmbedderSpec, parent_manifest) -> None:
    """Refuse an encoder other than the one that made the store's keys.

    Raises:
        EmbedderMismatch: name, dim, pooling, normalisation, max_length or weights differ.
    """
    if parent_manifest is not None:
        Compatibility.of(embedder=spec, source="this run", kind="run").check(
            _parent_terms(parent_manifest), terms=("embedder",), error=EmbedderMismatch,
            fix="pass --embedder with the store's encoder, or ingest into a new, empty store",
        )


def build_pipeline(pipeline: beam.Pipeline, plan: IngestPlan) -> None:
    """Add the ingest job's transforms to a pipeline: the procedure, one composite per step.

    Args:
        pipeline: an empty pipeline with the run's options.
        plan: what to read, where to write, and with which tokenizer and encoder.
    """
    config = plan.config
    ledger = pipeline | "ReadLedger" >> ReadLedger(plan.store_uri, plan.parent)
    read = Crawl(config) if plan.targets is None else FetchTargets(config, plan.targets)
    fetched = ledger | "Crawl" >> read
    documents = fetched | "Extract" >> Extract(config.documents, plan.tokenizer_json)
    diff = {"ledger": ledger, **documents} | "DiffAgainstLedger" >> DiffAgainstLedger(
        {s.name: s.kind for s in config.sources}, config.names, plan.started_at
    )
    chunked = diff[TO_CHUNK] | "ChunkAndEmbed" >> ChunkAndEmbed(
        plan.tokenizer_json, plan.tokenizer_name, plan.tokenizer_sha256, embedding_handler(plan)
    )
    rows = (diff[LEDGER], chunked["ledger"], chunked[KEPT]) | "AllLedgerRows" >> beam.Flatten()
    tombstones = {"tombstones": diff[TOMBSTONES], "kept": chunked[KEPT]} | "DropKeptTombstones" >> DropKeptTombstones()
    delta = {"embedded": chunked["embedded"], "ledger": rows, "tombstones": tombstones, "changes": diff["changes"]}
    delta | "WriteDelta" >> WriteDelta(draft_spec(plan))


def embedding_handler(plan: IngestPlan) -> ChunkEmbeddingHandler:
    """The RunInference handler of a run: its encoder, in Beam batches of 4 to 16 encoder passes."""
    return ChunkEmbeddingHandler(
        plan.embedder_path,
        max_length=plan.embedder.max_length,
        encode_batch_size=plan.embed_batch_size,
        min_batch_size=4 * plan.embed_batch_size,
        max_batch_size=16 * plan.embed_batch_size,
        torch_threads=plan.torch_threads,
        precision=plan.precision,
    )


def draft_spec(plan: IngestPlan) -> DraftSpec:
    """What the writer records in the draft version besides the data."""
    return DraftSpec(
        store_uri=plan.store_uri,
        version=plan.version,
        parent=plan.parent,
        embedder=plan.embedder,
        tokenizer_name=plan.tokenizer_name,
        tokenizer_sha256=plan.tokenizer_sha256,
        sources=tuple(plan.config.names),
    )


def run_ingest(
    sources: SourcesConfig | str | Path,
    store_uri: str,
    *,
    pipeline_args: list[str] | None = None,
    runner: str = "local",
    embedder_path: str | None = None,
    tokenizer_path: str | None = None,
    wait: bool = True,
    embed_batch_size: int = 64,
    torch_threads: int | None = None,
    urls: list[str] | None = None,
    max_targets: int | None = None,
    precision: str | None = None,
    direct: bool | None = None,
) -> IngestResult:
    """Run the ingest job once against a store's current version.

    Args:
        sources: a SourcesConfig, or the path of a sources YAML file.
        store_uri: the index store (a directory or gs://bucket/prefix).
        pipeline_args: standard Beam flags; ``--runner`` among them overrides ``runner``.
        runner: "local" (in-process), "multiprocess" (a worker process per core), "dask" (a Dask
            cluster: ``--dask_client_address=tcp://HOST:PORT`` in pipeline_args) or "dataflow".
        embedder_path: encoder directory (on the workers); None: bundled all-MiniLM-L6-v2.
        tokenizer_path: tokenizer.json or checkpoint dir; None: the bundled default, which
            must be the store's.
        wait: wait for the job to finish (always true locally).
        embed_batch_size: texts per encoder forward pass (Beam batches hold 4 to 16 of them,
            sorted by length so each pass pads little).
        torch_threads: torch threads per embedding model (None: torch's default).
        urls: a targeted run: fetch only these URLs (or files), each of which must belong to a
            configured source (others are refused, never fetched); documents not named are kept.
            None: the full crawl.
        max_targets: most URLs a targeted run fetches; the rest come back in ``deferred``.
        precision: the encoder's: "fp32", "bf16" (autocast) or "auto" (bf16 where a worker's CPU
            runs it faster, decided on each worker); None: the settings' (RETROFRESH_PRECISION,
            default auto). Keys of either precision may share a store (docs/ARCHITECTURE.md).
        direct: run a targeted run's DoFns here without a Beam runner (:mod:`beam_jobs.direct`);
            None: when it names at most ``DIRECT_MAX_TARGETS`` URLs on the local runner with no
            Beam flags. False: always the Beam pipeline.

    Returns:
        The IngestResult.

    Raises:
        SourcesError: the sources file is invalid.
        TokenizerMismatch, EmbedderMismatch: the run would mix models in one index.
        ValueError: a Dataflow run against a store that is not on gs://.
    """
    from model.store import open_store

    started = time.monotonic()
    precision = check_precision(precision if precision is not None else get_settings().precision)
    config = sources if isinstance(sources, SourcesConfig) else load_sources(sources)
    store = open_store(store_uri)
    parent = store.current()
    parent_manifest = store.manifest(parent) if parent else None
    tokenizer = resolve_tokenizer(tokenizer_path, parent_manifest)
    spec = embedder_spec(embedder_path)
    check_embedder(spec, parent_manifest)
    targets = None
    if urls is not None:
        held = held_by_source(store.read_ledger(parent).select(["doc_id", "source"])) if parent_manifest and parent_manifest.ledger else {}
        targets = resolve_targets(config, urls, max_targets=max_targets or DEFAULT_MAX_TARGETS, held=held)
        if not targets.count:
            LOG.info("targeted ingest: nothing to fetch (%d URLs refused)", len(targets.refused))
            return IngestResult(None, parent, metrics.collect(None) | {"refused_urls": len(targets.refused)}, 0, 0,
                                time.monotonic() - started, refused=list(targets.refused))
    version = store.new_version_id()
    if direct is None:
        direct = direct_eligible(targets, runner=runner, pipeline_args=pipeline_args)
    elif direct and targets is None:
        raise ValueError("direct=True runs a targeted ingest only (pass urls); a full crawl builds the Beam pipeline")
    options = pipeline_options(runner, pipeline_args, job_name=f"retrofresh-ingest-{version}".lower().replace("_", "-"))
    dataflow = is_dataflow(options)
    if dataflow and not str(store_uri).startswith("gs://"):
        raise ValueError(f"a Dataflow job writes from its workers: the store must be on gs://, not {store_uri!r}")
    plan = IngestPlan(
        config=config,
        store_uri=store_uri,
        parent=parent,
        version=version,
        tokenizer_json=tokenizer.to_json(),
        tokenizer_name=tokenizer.name,
        tokenizer_sha256=tokenizer.sha256,
        embedder_path=str(embedder_path) if embedder_path else None,
        embedder=spec,
        started_at=utcnow(),
        embed_batch_size=embed_batch_size,
        torch_threads=torch_threads,
        precision=precision,
        targets=targets,
    )
    if direct:
        LOG.info("targeted ingest of %d URLs %s -> %s (parent %s), run directly", targets.count, ",".join(config.names), version, parent)
        counters = run_direct(plan, embedding_handler(plan), draft_spec(plan))
        return IngestResult(
            version=version if counters.get("drafts_written", 0) > 0 else None, parent=parent,
            metrics=counters | {"targets": targets.count, "refused_urls": len(targets.refused), "deferred_urls": len(targets.deferred)},
            chunks_added=counters.get("chunks", 0), chunks_removed=counters.get("tombstones", 0), seconds=time.monotonic() - started,
            refused=list(targets.refused), deferred=list(targets.deferred),
        )
    LOG.info("ingest %s -> %s (parent %s) on %s", ",".join(config.names), version, parent, options.view_as(StandardOptions).runner)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, plan)
    result = pipeline.run()
    if is_dry_run(options):
        from beam_jobs.dataflow import describe_job

        return IngestResult(None, parent, metrics.collect(None), 0, 0, time.monotonic() - started, state="DRY_RUN", dataflow_job=describe_job(result, options))
    if wait or not dataflow:
        result.wait_until_finish()
    counters = metrics.collect(result) if (wait or not dataflow) else metrics.collect(None)
    job_id, url = None, None
    if dataflow:
        from beam_jobs.dataflow import job_url

        job_id = result.job_id()
        url = job_url(options, job_id)
    done = wait or not dataflow
    written = counters.get("drafts_written", 0) > 0
    if targets is not None:
        counters |= {"targets": targets.count, "refused_urls": len(targets.refused), "deferred_urls": len(targets.deferred)}
    return IngestResult(
        version=version if (written or not done) else None,
        parent=parent,
        metrics=counters,
        chunks_added=counters.get("chunks", 0),
        chunks_removed=counters.get("tombstones", 0),
        seconds=time.monotonic() - started,
        job_id=job_id,
        dataflow_url=url,
        state=str(result.state),
        refused=list(targets.refused) if targets else [],
        deferred=list(targets.deferred) if targets else [],
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m beam_jobs.ingest --sources FILE --store URI [standard Beam options]``."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    ours = IngestOptions(argv).view_as(IngestOptions)
    if not ours.sources or not ours.store:
        print("usage: python -m beam_jobs.ingest --sources FILE --store URI [Beam options]", file=sys.stderr)
        return 2
    result = run_ingest(
        ours.sources,
        ours.store,
        pipeline_args=argv,
        embedder_path=ours.embedder,
        tokenizer_path=ours.tokenizer,
        embed_batch_size=ours.embed_batch_size,
        torch_threads=ours.torch_threads,
        precision=ours.precision,
    )
    print(json.dumps(result.to_dict(), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
