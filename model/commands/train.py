"""``retrofresh train``, ``score`` and ``generate``: the RETRO model from the command line."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import click

from model.contracts.compat import Compatibility
from model.contracts.settings import Settings

LOG = logging.getLogger(__name__)


def _settings(**flags) -> Settings:
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def _layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer numbers like 3,6, got {value!r}") from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _retriever(view, embedder):
    from model.store.retriever import StoreRetriever

    return StoreRetriever(view, embedder)


def _to_tokens(view, tokenizer, tokenizer_path: Path | None):
    """Re-encode neighbours when the store was chunked with another tokenizer than the model's."""
    from model.contracts.tokenizer import RetroTokenizer
    from model.training.neighbours import retokenizer

    if view.manifest.tokenizer.sha256 == tokenizer.sha256:
        return None
    store_tokenizer = RetroTokenizer.load(tokenizer_path)
    given = f"--store-tokenizer {tokenizer_path}" if tokenizer_path else "the shipped tokenizer (no --store-tokenizer)"
    Compatibility.of(tokenizer=store_tokenizer, source=given, kind="run").check(
        Compatibility.of_manifest(view.manifest), terms=("tokenizer",),
        fix=f"the model uses {tokenizer.name}: pass the store's tokenizer.json with --store-tokenizer", error=click.UsageError,
    )
    return retokenizer(store_tokenizer, tokenizer)


def _open_view(settings: Settings, version: str | None, embedder):
    from model.store import StoreError, open_store

    if not settings.store:
        raise click.UsageError("no store: pass --store or set RETROFRESH_STORE")
    try:
        store = open_store(settings.store, cache_dir=settings.cache_dir)
        return store.open(version, embedder=embedder.spec)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _precision(settings: Settings):
    """The run's precision, decided once (``auto`` measures this machine: model.contracts.precision)."""
    from model.contracts.precision import resolve

    try:
        return resolve(settings.precision, settings.device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _embedder(settings: Settings, path: Path | None):
    from model.contracts.embedder import Embedder

    return Embedder(path or settings.embedder_path, device=settings.device, precision=settings.precision)


# train


@click.command()
@click.option("--store", help="index store to train on [RETROFRESH_STORE]; with --input, where the files are indexed first.")
@click.option("--version", "version", help="store version (default: CURRENT).")
@click.option("--input", "inputs", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="text or .jsonl files to index into an empty store first (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="checkpoint directory.")
@click.option("--preset", default="small", show_default=True, type=click.Choice(["tiny", "mini", "small", "185m"]), help="network size (mini: the demo's model).")
@click.option("--cca-layers", help="1-based layers with chunked cross-attention, e.g. 3,6 (default: the preset's).")
@click.option("--seq-len", default=512, show_default=True, type=int, help="tokens per training window (multiple of 64).")
@click.option("--k", "k", default=2, show_default=True, type=int, help="neighbours per chunk.")
@click.option("--steps", default=1000, show_default=True, type=int)
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--lr", default=3e-4, show_default=True, type=float)
@click.option("--warmup", "warmup_steps", default=100, show_default=True, type=int)
@click.option("--eval-every", default=100, show_default=True, type=int)
@click.option("--eval-fraction", default=0.05, show_default=True, type=float, help="share of documents held out.")
@click.option("--checkpoint-every", default=0, show_default=True, type=int, help="0: only at the end.")
@click.option("--max-minutes", default=0.0, show_default=True, type=float, help="stop after the step that passes this many minutes of training (0: run all --steps).")
@click.option("--resume", is_flag=True, help="continue the run saved in --out.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path), help="tokenizer.json the store was chunked with (default: the shipped one).")
@click.option("--base-model", type=click.Path(exists=True, file_okay=False, path_type=Path), help="RETRO-fit this Hugging Face causal LM (frozen) instead of training from scratch.")
@click.option("--gguf-file", help="GGUF file name inside --base-model.")
@click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path), help="key/query encoder (default: bundled all-MiniLM-L6-v2).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="shard and neighbour cache [RETROFRESH_CACHE_DIR].")
@click.option("--device", help="torch device [RETROFRESH_DEVICE].")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="fp32, bf16 (autocast) or auto: bf16 where this machine runs it faster [RETROFRESH_PRECISION, default auto].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--own-passage-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="share of training chunks that also see a shifted window of their own document as a neighbour; "
                   "teaches a small model to copy from what it retrieves (the demo's model uses 0.5).")
@click.option("--neighbour-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="share of training chunks that see no neighbours (keeps the model usable with retrieval off).")
@click.option("--cca-previous-token-keys", is_flag=True,
              help="CCA keys also read the neighbour token before them and CCA starts as an induction head "
                   "(the demo's model has it; with --base-model its output starts scaled by --cca-gate).")
@click.option("--cca-token-query", is_flag=True,
              help="with --base-model and --cca-previous-token-keys: CCA queries also read the embedding of the token just read, "
                   "so the induction head matches tokens in a frozen base whose late hidden states no longer hold them.")
@click.option("--cca-gate", default=0.0, show_default=True, type=float,
              help="with --base-model and --cca-previous-token-keys: the induction head's output scale at step 0 (0: zero).")
@click.option("--weights-dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="with --base-model: the dtype the checkpoint stores the trained weights in (bf16: half the size; they load back as fp32).")
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the training step (faster on GPU; compiling takes a minute or two).")
@click.option("--quiet", is_flag=True, help="no progress bars.")
def train(store, version, inputs, out, preset, cca_layers, seq_len, k, steps, batch_size, lr, warmup_steps, eval_every, eval_fraction,
          checkpoint_every, max_minutes, resume, tokenizer_path, base_model, gguf_file, embedder_path, cache_dir, device, precision, seed, own_passage_rate,
          neighbour_dropout, cca_previous_token_keys, cca_token_query, cca_gate, weights_dtype, compile_model, quiet) -> None:
    """Train a RETRO model on a store version (or on files, indexed into a new store first).

    Every training chunk's k neighbours are searched once through the store, excluding its own
    document, and cached by (data, index version, embedder). Prints the final eval loss with and
    without retrieval as JSON.
    """
    import torch

    from model.contracts.tokenizer import RetroTokenizer
    from model.network.config import RetroConfig
    from model.network.retro import Retro
    from model.training.loop import TrainConfig, train as run_training
    from model.training.prepare import prepare_from_view

    _logging(not quiet)
    settings = _settings(store=store, cache_dir=cache_dir, device=device, precision=precision)
    torch.manual_seed(seed)
    store_tokenizer = RetroTokenizer.load(tokenizer_path)
    embedder = _embedder(settings, embedder_path)
    if inputs:
        from model.store import open_store
        from model.training.corpus import index_documents, read_documents

        if not settings.store:
            settings = _settings(store=str(out.parent / f"{out.name}-store"), cache_dir=cache_dir, device=device, precision=precision)
        try:
            version = index_documents(open_store(settings.store, cache_dir=settings.cache_dir), read_documents(inputs), store_tokenizer, embedder, progress=not quiet)
        except (ValueError, FileNotFoundError) as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(f"indexed {len(inputs)} file(s) into {settings.store} as version {version}", err=True)

    if base_model is not None:
        from model.network.retrofit import RetroFit, base_source, load_base

        if cca_token_query and not cca_previous_token_keys:
            raise click.UsageError("--cca-token-query completes the induction head of --cca-previous-token-keys; give both")
        base, tokenizer = load_base(base_model, gguf_file=gguf_file)
        layers = _layers(cca_layers) or tuple(range(6, base.config.num_hidden_layers + 1, 3))
        model = RetroFit.wrap(base, cca_layers=layers, k=k, tokenizer=tokenizer, embedder=embedder.spec,
                              base_source=base_source(base_model, gguf_file), previous_token_keys=cca_previous_token_keys,
                              token_query=cca_token_query, cca_gate=cca_gate)
        model.weights_dtype = torch.bfloat16 if weights_dtype == "bf16" else None
    else:
        tokenizer = store_tokenizer
        overrides = {"vocab_size": tokenizer.vocab_size, "k": k, "max_seq_len": max(seq_len, 256),
                     "tokenizer": tokenizer.info, "embedder": embedder.spec}
        if cca_layers:
            overrides["cca_layers"] = _layers(cca_layers)
        if cca_previous_token_keys:
            overrides["cca_previous_token_keys"] = True
        try:
            model = Retro(RetroConfig.preset(preset, **overrides))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None

    cfg = model.config
    with _open_view(settings, version, embedder) as view:
        try:
            data = prepare_from_view(
                view, embedder, tokenizer, seq_len=seq_len, k=k, chunk_tokens=cfg.chunk_tokens, neighbour_tokens=cfg.neighbour_tokens,
                eval_fraction=eval_fraction, cache_dir=Path(settings.cache_dir) / "neighbours",
                store_tokenizer=store_tokenizer, pad_id=cfg.pad_token_id, seed=seed, progress=not quiet,
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    cfg.extra = {"data": data.info}
    train_cfg = TrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup_steps=warmup_steps, eval_every=eval_every,
        checkpoint_every=checkpoint_every, out_dir=str(out), device=settings.device, precision=settings.precision, seed=seed,
        compile=compile_model, progress=not quiet,
        own_passage_rate=own_passage_rate, neighbour_dropout=neighbour_dropout, max_minutes=max_minutes,
    )
    click.echo(f"model: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters; "
               f"data: {data.info['train_sequences']} train / {data.info['eval_sequences']} eval windows of {seq_len}", err=True)
    result = run_training(model, data.train, data.eval if len(data.eval) else None, train_cfg, tokenizer=tokenizer, resume=resume, extra={"data": data.info})
    report = {"checkpoint": str(out), "steps": result.steps, "train_loss": result.train_loss, "tokens_per_s": result.tokens_per_s,
              "eval": [asdict(e) for e in result.evals], "data": data.info}
    click.echo(json.dumps(report, indent=2))


# score and generate


def _load(settings: Settings):
    from model.network.checkpoint import load_checkpoint

    if settings.checkpoint is None:
        raise click.UsageError("no checkpoint: pass --checkpoint or set RETROFRESH_CHECKPOINT")
    try:
        return load_checkpoint(settings.checkpoint, device=settings.device)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from None


_common = [
    click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), help="checkpoint directory [RETROFRESH_CHECKPOINT]."),
    click.option("--store", help="index store to retrieve from [RETROFRESH_STORE]; without one, retrieval is off."),
    click.option("--version", "version", help="store version (default: CURRENT)."),
    click.option("--k", "k", type=int, help="neighbours per chunk (default: the model's)."),
    click.option("--embedder", "embedder_path", type=click.Path(exists=True, file_okay=False, path_type=Path), help="query encoder (default: bundled all-MiniLM-L6-v2)."),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="shard cache [RETROFRESH_CACHE_DIR]."),
    click.option("--device", help="torch device [RETROFRESH_DEVICE]."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="fp32, bf16 (autocast) or auto: bf16 where this machine runs it faster [RETROFRESH_PRECISION, default auto]."),
    click.option("--store-tokenizer", type=click.Path(exists=True, path_type=Path), help="tokenizer.json the store was chunked with, when it is not the model's (RETRO-fitted models)."),
]


def _with_common(fn):
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command()
@_with_common
@click.option("--text", help="text to score.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="file whose text to score.")
@click.option("--exclude-doc", help="never use neighbours from this document (its URL or doc id).")
@click.option("--exclude-ngram", type=int, help="drop neighbours sharing an n-gram this long with the chunk they help predict.")
@click.option("--no-retrieval", is_flag=True, help="only score with retrieval off.")
def score(checkpoint, store, version, k, embedder_path, cache_dir, device, precision, store_tokenizer, text, file, exclude_doc, exclude_ngram,
          no_retrieval) -> None:
    """Loss and bits-per-byte of a text, with retrieval on and off (printed as JSON)."""
    from model.contracts.ids import doc_id
    from model.network.scoring import score as run_score

    if (text is None) == (file is None):
        raise click.UsageError("give exactly one of --text and --file")
    text = text if text is not None else file.read_text(encoding="utf-8")
    settings = _settings(checkpoint=checkpoint, store=store, cache_dir=cache_dir, device=device, precision=precision)
    model, tokenizer = _load(settings)
    decision = _precision(settings)
    exclude = exclude_doc if exclude_doc is None or len(exclude_doc) == 16 and "/" not in exclude_doc else doc_id(exclude_doc)
    report = {}
    try:
        report["no_retrieval"] = asdict(run_score(model, tokenizer, text, retriever=None, precision=decision))
        if settings.store and not no_retrieval:
            embedder = _embedder(settings, embedder_path)
            with _open_view(settings, version, embedder) as view:
                result = run_score(model, tokenizer, text, retriever=_retriever(view, embedder), k=k, exclude_doc_id=exclude,
                                   exclude_ngram=exclude_ngram, to_tokens=_to_tokens(view, tokenizer, store_tokenizer), precision=decision)
                report["retrieval"] = {**asdict(result), "index_version": view.version}
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    report["precision"] = decision.precision
    click.echo(json.dumps(report, indent=2))


@click.command()
@_with_common
@click.option("--prompt", required=True, help="text to continue.")
@click.option("--max-new-tokens", default=64, show_default=True, type=int)
@click.option("--temperature", default=1.0, show_default=True, type=float, help="0: greedy.")
@click.option("--top-k", type=int)
@click.option("--top-p", type=float)
@click.option("--seed", type=int)
@click.option("--json", "as_json", is_flag=True, help="print the whole result (neighbours included) as JSON.")
def generate(checkpoint, store, version, k, embedder_path, cache_dir, device, precision, store_tokenizer, prompt, max_new_tokens, temperature, top_k,
             top_p, seed, as_json) -> None:
    """Continue a prompt, retrieving neighbours from the store at every completed chunk."""
    from model.network.generation import generate as run_generate

    settings = _settings(checkpoint=checkpoint, store=store, cache_dir=cache_dir, device=device, precision=precision)
    model, tokenizer = _load(settings)
    kwargs = dict(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  precision=_precision(settings))
    try:
        if settings.store:
            embedder = _embedder(settings, embedder_path)
            with _open_view(settings, version, embedder) as view:
                result = run_generate(model, tokenizer, prompt, retriever=_retriever(view, embedder), to_tokens=_to_tokens(view, tokenizer, store_tokenizer), **kwargs)
                index_version = view.version
        else:
            result, index_version = run_generate(model, tokenizer, prompt, retriever=None, **kwargs), None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not as_json:
        click.echo(prompt + result.text)
        return
    data = asdict(result)
    data["index_version"] = index_version
    click.echo(json.dumps(data, indent=2, default=str))
