"""A small targeted ingest run directly in this process: the ingest job's DoFns, without a Beam runner.

A change event names a few URLs. Through Beam's in-process FnApiRunner their ingest costs about a
second and a half of CPU before and around the work itself (building the pipeline, turning it into
protos, one bundle processor per fused stage, each inspecting every DoFn's signatures again),
against a tenth of that for fetching, extracting and writing a handful of pages. For such a batch
:func:`run_direct` runs the very DoFns and functions of :func:`beam_jobs.ingest.build_pipeline`'s
transforms, in the same order, on plain lists: one implementation of every step, only the
plumbing differs. What the composite transforms do between their DoFns (key by document, join,
flatten, distinct) is done here with the same key functions they use.

Counters go to a Beam ``MetricsContainer`` (as on a runner), so the run reports exactly the
counters a Beam run does. Used by ``run_ingest`` for targeted runs of at most
``DIRECT_MAX_TARGETS`` URLs on the local runner only; full crawls, larger batches and the
multiprocess, Dask and Dataflow runners build the Beam pipeline as before.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Iterable

from apache_beam import pvalue

from beam_jobs import metrics
from beam_jobs.chunk import KEPT, LEDGER as CHUNK_LEDGER, ChunkDoFn, keep_tombstones, keyed_kept, keyed_tombstones
from beam_jobs.crawl import ReadFileDoFn
from beam_jobs.diff import LEDGER, TO_CHUNK, TOMBSTONES, DiffDoFn, by_doc_id
from beam_jobs.extract import ExtractDoFn
from beam_jobs.targets import FetchTargetsDoFn, StatTargetFilesDoFn, known_by_source
from beam_jobs.types import INCOMPLETE
from beam_jobs.write import DELTA_KEY, DraftSpec, ReadLedgerDoFn, WriteDelta, WriteDeltaDoFn

if TYPE_CHECKING:
    from beam_jobs.ingest import IngestPlan

MAIN = None  # the main output's tag in run_dofn's answer
DIRECT_MAX_TARGETS = 32  # a targeted run of at most this many URLs on the local runner runs directly


def run_dofn(dofn, elements: Iterable, **side_inputs) -> dict[str | None, list]:
    """Run one DoFn over elements as one bundle (setup, start, process each, finish, teardown).

    Returns:
        Output tag (``MAIN`` for the main output) -> the values, in order.
    """
    out: dict[str | None, list] = defaultdict(list)
    dofn.setup()
    try:
        dofn.start_bundle()
        for element in elements:
            for item in dofn.process(element, **side_inputs) or ():
                if isinstance(item, pvalue.TaggedOutput):
                    out[item.tag].append(item.value)
                else:
                    out[MAIN].append(item)
        if dofn.finish_bundle():  # none of the ingest's DoFns emit here; one that did would be lost
            raise RuntimeError(f"{type(dofn).__name__}.finish_bundle emitted values, which run_dofn does not carry")
    finally:
        dofn.teardown()
    return out


def co_group(**parts: Iterable[tuple]) -> list[tuple]:
    """Beam's CoGroupByKey on lists: (key, {part: [values]}) for every key any part holds."""
    grouped: dict = {}
    for name, pairs in parts.items():
        for key, value in pairs:
            grouped.setdefault(key, {n: [] for n in parts})[name].append(value)
    return list(grouped.items())


def run_direct(plan: IngestPlan, handler, spec: DraftSpec) -> dict[str, int]:
    """The ingest job of a targeted plan, run here; returns its counters (as ``metrics.collect``).

    Args:
        plan: a targeted plan (``plan.targets`` set).
        handler: the run's embedding handler (``beam_jobs.ingest.embedding_handler(plan)``).
        spec: what the writer records (``beam_jobs.ingest.draft_spec(plan)``).
    """
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    if plan.targets is None:
        raise ValueError("run_direct runs targeted plans only; a full crawl builds the Beam pipeline")
    container = MetricsContainer("direct-ingest")
    previous = statesampler.get_current_tracker()
    sampler = statesampler.StateSampler("", CounterFactory())
    statesampler.set_current_tracker(sampler)  # Metrics.counter(...).inc() counts into the container
    try:
        with sampler.scoped_state("direct-ingest", "process", metrics_container=container):
            _ingest(plan, handler, spec)
    finally:
        statesampler.set_current_tracker(previous)
    return metrics.from_container(container)


def _ingest(plan: IngestPlan, handler, spec: DraftSpec) -> None:
    """build_pipeline's steps, in its order, on lists."""
    config, targets = plan.config, plan.targets
    # ReadLedger
    ledger = run_dofn(ReadLedgerDoFn(plan.store_uri), [plan.parent] if plan.parent else [])[MAIN]
    # FetchTargets
    by_source = [(config.source(name), urls) for name, urls in targets.by_source.items()]
    web = [(source, urls) for source, urls in by_source if source.kind != "files"]
    paths = [(source, path) for source, urls in by_source if source.kind == "files" for path in urls]
    known = _multimap(known_by_source(row) for row in ledger)
    crawled = run_dofn(FetchTargetsDoFn(config.fetch), web, known=known)[MAIN]
    stat = run_dofn(StatTargetFilesDoFn(), paths)
    read = run_dofn(ReadFileDoFn(), stat[MAIN])
    results = crawled + stat["results"] + read[MAIN]
    incomplete = list(config.names) + read[INCOMPLETE]
    # Extract
    documents = plan.config.documents
    extracted = run_dofn(ExtractDoFn(documents.max_bytes, documents.max_chunks, plan.tokenizer_json), results)
    incomplete = list(dict.fromkeys(incomplete + extracted[INCOMPLETE]))
    # DiffAgainstLedger
    joined = co_group(old=map(by_doc_id, ledger), new=map(by_doc_id, extracted[MAIN]))
    diff = run_dofn(DiffDoFn({s.name: s.kind for s in config.sources}, config.names, plan.started_at), joined, incomplete=incomplete)
    # ChunkAndEmbed
    chunked = run_dofn(ChunkDoFn(plan.tokenizer_json, plan.tokenizer_name, plan.tokenizer_sha256), diff[TO_CHUNK])
    embedded = _embed(handler, chunked[MAIN])
    # AllLedgerRows, DropKeptTombstones
    rows = diff[LEDGER] + chunked[CHUNK_LEDGER] + chunked[KEPT]
    tombstones = [
        ids for item in co_group(tombstones=map(keyed_tombstones, diff[TOMBSTONES]), kept=map(keyed_kept, chunked[KEPT]))
        for ids in keep_tombstones(item)
    ]
    # WriteDelta
    parts = {"embedded": embedded, "ledger": rows, "tombstones": tombstones, "changes": diff[MAIN]}
    assert set(parts) == set(WriteDelta.PARTS)
    if any(parts.values()):  # CoGroupByKey emits the one key only when some part holds a value
        run_dofn(WriteDeltaDoFn(spec), [(DELTA_KEY, parts)])


def _multimap(pairs: Iterable[tuple]) -> dict[str, list]:
    """Beam's AsMultiMap side input on a list of pairs."""
    out: dict = defaultdict(list)
    for key, value in pairs:
        out[key].append(value)
    return out


def _embed(handler, chunks: list) -> list:
    """RunInference on a list: the handler's model, in batches of at most its largest Beam batch."""
    if not chunks:
        return []
    model = handler.load_model()
    size = handler.batch_elements_kwargs().get("max_batch_size") or len(chunks)
    embedded: list = []
    for start in range(0, len(chunks), size):
        embedded.extend(handler.run_inference(chunks[start:start + size], model))
    return embedded


def direct_eligible(targets, *, runner: str, pipeline_args: list[str] | None, limit: int = DIRECT_MAX_TARGETS) -> bool:
    """Whether a run goes through :func:`run_direct`: a targeted run of few URLs on the local runner, no Beam flags."""
    return targets is not None and runner == "local" and not pipeline_args and 0 < targets.count <= limit

