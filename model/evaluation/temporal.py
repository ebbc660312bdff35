"""Temporal bits-per-byte: a frozen RETRO model scored on dated documents under several index conditions.

The question is the temporal generalization one (Lazaridou et al. 2021): do a model's predictions
on text written after its training follow a fresher index? Every document is scored, with the same
weights, under each condition:

- ``none``: retrieval off;
- ``stale``: the index version the model was trained on (or one as old);
- ``fresh``: a newer version, holding text from after the cutoff;
- ``control`` (optional): a stale index padded with more pre-cutoff text to the fresh one's size,
  so a gain of ``fresh`` can be told apart from a gain of size;
- ``retrained`` (optional): a checkpoint trained with the fresh data too, scored with the fresh
  index: the upper control;
- ``prepend-none``, ``prepend-stale``, ``prepend-fresh`` (optional): In-Context RALM
  (:mod:`model.evaluation.ralm`), a frozen pretrained LM reading the same neighbours as text
  prepended to its context. ``prepend-none`` is that LM with nothing prepended: its own baseline,
  another model than RETRO's ``none``.

Each condition is compared with its own family's baseline and stale twin (:data:`NONE_TWIN`,
:data:`STALE_TWIN`) by paired bootstrap intervals of the differences, and its scoring speed
(tokens per second of retrieval and forward passes, the 13-gram-filtered pass left out) is reported.

Leakage control is always on: neighbours from the evaluated document itself (its id or URL) are
never used. As in RETRO (Borgeaud et al. 2022, §4.4) the result is also broken down by how much of
each evaluation chunk its neighbours contain: bpb over the chunks whose longest common token run
with their neighbours is below α·64, and bpb with every neighbour that shares a 13-gram with the
chunk it helps predict dropped. Intervals are 95% bootstrap intervals over documents (one set of
resamples shared by all conditions, so differences are paired).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from model.contracts.ids import canonical_url
from model.contracts.retrieval import Neighbour, Retriever
from model.evaluation.documents import DatedDocument
from model.network.scoring import OVERFETCH, chunk_neighbours, drop_leaking, longest_common_run, token_losses

LOG = logging.getLogger(__name__)

CONDITIONS = ("none", "stale", "fresh", "control", "retrained", "prepend-none", "prepend-stale", "prepend-fresh")
BASELINES = ("none", "prepend-none")  # retrieval off: no neighbour fields, no overlap buckets
# Each condition's baseline (retrieval off, same weights) and stale twin (same weights, the stale index).
NONE_TWIN = {"stale": "none", "fresh": "none", "control": "none", "retrained": "none",
             "prepend-stale": "prepend-none", "prepend-fresh": "prepend-none"}
STALE_TWIN = {"fresh": "stale", "control": "stale", "retrained": "stale", "prepend-fresh": "prepend-stale"}
ALPHAS = (0.125, 0.25, 0.5, 1.0)
LEAK_NGRAM = 13  # RETRO's n-gram for "this neighbour contains the target"


@dataclass
class Condition:
    """One way of scoring: a model, and the index it reads (None: retrieval off)."""

    name: str
    model: object  # model.network.retro.Retro or model.network.retrofit.RetroFit
    tokenizer: object  # model.contracts.tokenizer.RetroTokenizer (or the RETRO-fitted model's)
    retriever: Retriever | None = None
    version: str | None = None
    store: str | None = None
    to_tokens: Callable[[Neighbour], list[int]] | None = None
    precision: object = "fp32"  # a RETRO model's: "fp32", "bf16", "auto" or a model.contracts.precision.Decision

    def token_losses(self, ids: list[int], found: list[list[Neighbour]] | None, *, k: int):
        """Nats of every predicted token: a RETRO model reads neighbours through chunked cross-attention,
        an :class:`model.evaluation.ralm.InContextRALM` as prepended text."""
        own = getattr(self.model, "token_losses", None)
        if own is not None:
            return own(ids, found, k=k, to_tokens=self.to_tokens)
        return token_losses(self.model, ids, found, k=k, to_tokens=self.to_tokens, precision=self.precision)

    def reads(self, ids: list[int], found: list[list[Neighbour]] | None, *, k: int) -> tuple[int, int]:
        """The tokens the model reads to score ``ids``: ``(through the LM, through a neighbour encoder)``.

        The cost per scored token: an In-Context RALM runs its whole LM over each chunk's window
        (neighbours' text, the text's prefix, the chunk); a RETRO model runs its decoder once over
        the text and its small neighbour encoder over k neighbours of ``neighbour_tokens`` (padded) per chunk.
        """
        own = getattr(self.model, "reads", None)
        if own is not None:
            return own(ids, found, k=k, to_tokens=self.to_tokens)
        encoder = 0
        if found is not None and len(ids) // self.model.config.chunk_tokens:
            encoder = len(found) * k * self.model.config.neighbour_tokens
        return len(ids), encoder


@dataclass
class DocumentScore:
    """One document under one condition: totals and per-chunk sums of its predicted tokens."""

    bits: float
    bytes: int
    tokens: int
    chunk_bits: np.ndarray  # per chunk of the text (predicted tokens only)
    chunk_bytes: np.ndarray
    chunk_tokens: np.ndarray
    chunk_run: np.ndarray  # longest common token run between the chunk and the neighbours it reads (0: none)
    neighbours_used: int = 0
    bits_filtered: float | None = None  # with 13-gram-sharing neighbours dropped
    neighbours_dropped: int = 0
    seconds: float = 0.0  # retrieval and forward passes of the unfiltered scoring
    lm_tokens_read: int = 0  # tokens through the LM (decoder), and through a neighbour encoder, to score the text (Condition.reads)
    encoder_tokens_read: int = 0


class CachingEmbedder:
    """Wraps an embedder so every query text is encoded once, however many index versions it searches."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.spec = embedder.spec
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.spec.dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vector in zip(missing, self.embedder.encode(missing, batch_size=batch_size, progress=progress)):
                self._cache[text] = vector
        if not texts:
            return np.empty((0, self.spec.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def own_document_filter(document: DatedDocument) -> Callable[[Neighbour], bool]:
    """True for a neighbour that comes from the evaluated document (any of its ids, or its URL)."""
    ids, urls = document.own_doc_ids, document.own_urls

    def is_own(nb: Neighbour) -> bool:
        return nb.doc_id in ids or (bool(nb.url) and canonical_url(nb.url) in urls)

    return is_own


def _prefix_bytes(tokenizer, ids: list[int], cuts: list[int]) -> np.ndarray:
    return np.asarray([len(tokenizer.decode(ids[:c]).encode("utf-8")) for c in cuts], dtype=np.int64)


def score_document(condition: Condition, document: DatedDocument, ids: list[int], *, k: int, ngram: int = LEAK_NGRAM) -> DocumentScore:
    """Score one tokenised document under one condition (see the module docstring).

    Args:
        condition: model and index.
        document: the document (its ids and URL are never retrieved).
        ids: its tokens under ``condition.tokenizer`` (at least two).
        k: neighbours per chunk.
        ngram: neighbours sharing an n-gram this long with their target chunk are dropped for ``bits_filtered``.

    Returns:
        Totals and per-chunk sums.
    """
    model, tokenizer = condition.model, condition.tokenizer
    m = model.config.chunk_tokens
    n = len(ids)
    started = time.perf_counter()
    found = None
    if condition.retriever is not None and n // m:
        primary = next(iter(sorted(document.own_doc_ids)), None)
        found = chunk_neighbours(condition.retriever, tokenizer, ids, chunk_tokens=m, fetch=k * OVERFETCH,
                                 exclude_doc_id=primary, is_excluded=own_document_filter(document))
    losses = condition.token_losses(ids, found, k=k).numpy().astype(np.float64)
    seconds = time.perf_counter() - started
    lm_read, encoder_read = condition.reads(ids, found, k=k)
    bits = losses / math.log(2)
    chunk_of = np.arange(1, n) // m  # predicted token j + 1 lies in chunk (j + 1) // m
    n_chunks = (n - 1) // m + 1
    chunk_bits = np.bincount(chunk_of, weights=bits, minlength=n_chunks)
    chunk_tokens = np.bincount(chunk_of, minlength=n_chunks)
    cuts = [1] + [min((u + 1) * m, n) for u in range(n_chunks)]
    prefix = _prefix_bytes(tokenizer, ids, cuts)
    chunk_bytes = np.maximum(np.diff(prefix), 0)
    chunk_run = np.zeros(n_chunks, dtype=np.int64)
    used = dropped = 0
    bits_filtered = None
    if found is not None:
        as_tokens = condition.to_tokens or (lambda nb: nb.retrieved_tokens)
        for u in range(1, n_chunks):
            readers = found[u - 1][:k] if u - 1 < len(found) else []
            target = ids[u * m : (u + 1) * m]
            chunk_run[u] = max((longest_common_run(target, as_tokens(nb)) for nb in readers), default=0)
        used = sum(min(len(nbs), k) for nbs in found)
        kept, dropped = drop_leaking(found, ids, chunk_tokens=m, n=ngram, k=k, to_tokens=condition.to_tokens)
        bits_filtered = float(condition.token_losses(ids, kept, k=k).sum()) / math.log(2)
    return DocumentScore(
        bits=float(bits.sum()), bytes=int(prefix[-1] - prefix[0]), tokens=n - 1, chunk_bits=chunk_bits,
        chunk_bytes=chunk_bytes, chunk_tokens=chunk_tokens, chunk_run=chunk_run, neighbours_used=used,
        bits_filtered=bits_filtered, neighbours_dropped=dropped, seconds=seconds, lm_tokens_read=lm_read, encoder_tokens_read=encoder_read,
    )


# statistics


class Bootstrap:
    """Document resamples shared by every condition and subset (paired intervals)."""

    def __init__(self, n_documents: int, samples: int, seed: int = 0):
        self.samples = samples
        rng = np.random.default_rng(seed)
        self.indices = rng.integers(0, n_documents, size=(samples, n_documents)) if samples and n_documents else None

    def ratios(self, bits: np.ndarray, n_bytes: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray | None:
        """bits/bytes of each resample, restricted to the documents in ``subset`` (a boolean mask)."""
        if self.indices is None:
            return None
        weight = np.ones_like(bits) if subset is None else subset.astype(np.float64)
        b = (bits * weight)[self.indices].sum(1)
        y = (n_bytes * weight)[self.indices].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(y > 0, b / np.maximum(y, 1), np.nan)


def _ci(samples: np.ndarray | None) -> list[float] | None:
    if samples is None:
        return None
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [round(float(lo), 5), round(float(hi), 5)]


def _ratio(bits: float, n_bytes: float) -> float | None:
    return round(float(bits) / float(n_bytes), 5) if n_bytes > 0 else None


def summarise(
    names: list[str],
    scores: dict[str, list[DocumentScore]],
    documents: list[DatedDocument],
    *,
    bootstrap: int,
    seed: int = 0,
    alphas: Sequence[float] = ALPHAS,
    chunk_tokens: int = 64,
) -> dict:
    """The JSON result from per-document scores (see :func:`evaluate` for its fields)."""
    boot = Bootstrap(len(documents), bootstrap, seed)
    arrays = {name: (np.asarray([s.bits for s in scores[name]]), np.asarray([s.bytes for s in scores[name]], dtype=np.float64)) for name in names}
    samples = {name: boot.ratios(*arrays[name]) for name in names}
    conditions = {}
    for name in names:
        bits, n_bytes = arrays[name]
        tokens = int(sum(s.tokens for s in scores[name]))
        seconds = float(sum(s.seconds for s in scores[name]))
        row = {"bpb": _ratio(bits.sum(), n_bytes.sum()), "ci95": _ci(samples[name]),
               "tokens": tokens, "docs": len(scores[name]), "bytes": int(n_bytes.sum()),
               "scoring_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
               # The cost per scored token: tokens the model reads for each one it scores.
               "lm_tokens_read_per_token": round(sum(s.lm_tokens_read for s in scores[name]) / tokens, 3) if tokens else None,
               "encoder_tokens_read_per_token": round(sum(s.encoder_tokens_read for s in scores[name]) / tokens, 3) if tokens else None}
        # Paired differences to the same weights without retrieval and with the stale index.
        minus = {}
        for twin in (NONE_TWIN.get(name), STALE_TWIN.get(name)):
            if twin in arrays:
                twin_bits, twin_bytes = arrays[twin]
                paired = None if samples[name] is None else samples[name] - samples[twin]
                minus[twin] = {"bpb": _ratio(bits.sum(), n_bytes.sum()) - _ratio(twin_bits.sum(), twin_bytes.sum())
                               if n_bytes.sum() > 0 and twin_bytes.sum() > 0 else None, "ci95": _ci(paired)}
                if minus[twin]["bpb"] is not None:
                    minus[twin]["bpb"] = round(minus[twin]["bpb"], 5)
        if minus:
            row["minus"] = minus
        if name not in BASELINES:
            filtered = np.asarray([s.bits_filtered if s.bits_filtered is not None else s.bits for s in scores[name]])
            row.update({
                "neighbours_used": int(sum(s.neighbours_used for s in scores[name])),
                f"bpb_{LEAK_NGRAM}gram_filtered": _ratio(filtered.sum(), n_bytes.sum()),
                f"ci95_{LEAK_NGRAM}gram_filtered": _ci(boot.ratios(filtered, n_bytes)),
                f"neighbours_dropped_{LEAK_NGRAM}gram": int(sum(s.neighbours_dropped for s in scores[name])),
            })
        conditions[name] = row
    result: dict = {"conditions": conditions}
    diff = None
    if "fresh" in names and "stale" in names:
        stale, fresh = conditions["stale"]["bpb"], conditions["fresh"]["bpb"]
        diff = round(fresh - stale, 5) if stale is not None and fresh is not None else None
        paired = None if samples["fresh"] is None else samples["fresh"] - samples["stale"]
        result["fresh_minus_stale_ci95"] = _ci(paired)
    result["fresh_minus_stale_bpb"] = diff
    gap = None
    if "retrained" in names and diff is not None:
        span = conditions["stale"]["bpb"] - conditions["retrained"]["bpb"]
        gap = round((conditions["stale"]["bpb"] - conditions["fresh"]["bpb"]) / span, 4) if abs(span) > 1e-12 else None
    result["gap_closed"] = gap
    result["by_overlap"] = by_overlap(names, scores, boot, alphas=alphas, chunk_tokens=chunk_tokens)
    result["by_month"] = by_month(names, scores, documents, boot)
    return result


def by_overlap(names: list[str], scores: dict[str, list[DocumentScore]], boot: Bootstrap, *, alphas: Sequence[float], chunk_tokens: int) -> list[dict]:
    """Per α: each retrieval condition's bpb over the chunks whose longest run with its neighbours is below α·m,
    next to its baseline (retrieval off, the same weights: ``none`` or ``prepend-none``) on the very same chunks."""
    out = []
    for alpha in alphas:
        limit = alpha * chunk_tokens
        row = {"alpha": alpha, "max_run_below": limit, "conditions": {}}
        for name in names:
            if name in BASELINES:
                continue
            none = scores.get(NONE_TWIN.get(name))
            keep = [s.chunk_run < limit for s in scores[name]]
            bits = np.asarray([s.chunk_bits[mask].sum() for s, mask in zip(scores[name], keep)])
            n_bytes = np.asarray([s.chunk_bytes[mask].sum() for s, mask in zip(scores[name], keep)], dtype=np.float64)
            tokens = int(sum(s.chunk_tokens[mask].sum() for s, mask in zip(scores[name], keep)))
            total = sum(s.tokens for s in scores[name])
            entry = {"bpb": _ratio(bits.sum(), n_bytes.sum()), "ci95": _ci(boot.ratios(bits, n_bytes)),
                     "chunks": int(sum(mask.sum() for mask in keep)), "tokens": tokens,
                     "share_of_tokens": round(tokens / total, 4) if total else None}
            if none is not None:
                base_bits = np.asarray([s.chunk_bits[mask].sum() for s, mask in zip(none, keep)])
                entry["none_bpb"] = _ratio(base_bits.sum(), n_bytes.sum())
                entry["none_ci95"] = _ci(boot.ratios(base_bits, n_bytes))
            row["conditions"][name] = entry
        out.append(row)
    return out


def by_month(names: list[str], scores: dict[str, list[DocumentScore]], documents: list[DatedDocument], boot: Bootstrap) -> list[dict]:
    """Per month of ``published_at`` (oldest first): each condition's bpb and interval on that month's documents."""
    months = sorted({d.month for d in documents})
    out = []
    for month in months:
        subset = np.asarray([d.month == month for d in documents])
        row = {"month": month, "docs": int(subset.sum()), "conditions": {}}
        for name in names:
            bits = np.asarray([s.bits for s in scores[name]])
            n_bytes = np.asarray([s.bytes for s in scores[name]], dtype=np.float64)
            row["conditions"][name] = {"bpb": _ratio(bits[subset].sum(), n_bytes[subset].sum()),
                                       "ci95": _ci(boot.ratios(bits, n_bytes, subset)),
                                       "tokens": int(sum(s.tokens for s, inside in zip(scores[name], subset) if inside))}
        out.append(row)
    return out


# the whole evaluation


@dataclass
class TemporalEvaluation:
    """What :func:`evaluate` needs besides the conditions."""

    documents: list[DatedDocument]
    k: int
    bootstrap: int = 1000
    seed: int = 0
    skipped: dict = field(default_factory=dict)
    skipped_lines: dict = field(default_factory=dict)
    max_tokens: int | None = None  # score only each document's first max_tokens tokens (see :func:`truncate`)


def truncate(documents: list[DatedDocument], tokenizer, max_tokens: int) -> list[DatedDocument]:
    """Each document cut to the text of its first ``max_tokens`` tokens under ``tokenizer``, so every condition scores the same bytes."""
    import dataclasses

    out = []
    for d in documents:
        ids = tokenizer.encode(d.text)
        out.append(d if len(ids) <= max_tokens else dataclasses.replace(d, text=tokenizer.decode(ids[:max_tokens])))
    return out


def evaluate(conditions: list[Condition], spec: TemporalEvaluation, *, progress: bool = False) -> dict:
    """Score every document under every condition and summarise.

    Args:
        conditions: baselines first, then the retrieval conditions (names from :data:`CONDITIONS`), all with one chunk size.
        spec: the documents, k, bootstrap samples.
        progress: a progress bar on stderr.

    Returns:
        A JSON-ready dict: ``conditions`` {name: {bpb, ci95, tokens, docs, scoring_s, tokens_per_s,
        ``minus`` {baseline or stale twin: {bpb, paired ci95}}, ...}},
        ``fresh_minus_stale_bpb`` (and its paired ``fresh_minus_stale_ci95``), ``gap_closed``
        ((stale − fresh) / (stale − retrained), None without ``retrained``), ``by_overlap``,
        ``by_month``, ``skipped`` (lines per reason, including documents under two tokens), and
        what was evaluated (versions, k, dates).

    Raises:
        ValueError: no document has two tokens or more.
    """
    names = [c.name for c in conditions]
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"conditions must be distinct names from {CONDITIONS}, got {names}")
    sizes = {c.model.config.chunk_tokens for c in conditions}
    if len(sizes) != 1:
        raise ValueError(f"every condition must retrieve for chunks of one size, got {sorted(sizes)}")
    if spec.max_tokens is not None:
        if spec.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {spec.max_tokens}")
        # Cut with an In-Context RALM's tokenizer when there is one (the sizes count its tokens).
        reference = next((c for c in conditions if c.name.startswith("prepend-")), conditions[0]).tokenizer
        spec = TemporalEvaluation(truncate(spec.documents, reference, spec.max_tokens), k=spec.k, bootstrap=spec.bootstrap,
                                  seed=spec.seed, skipped=spec.skipped, skipped_lines=spec.skipped_lines, max_tokens=spec.max_tokens)
    skipped = dict(spec.skipped)
    skipped_lines = {k: list(v) for k, v in spec.skipped_lines.items()}
    tokenised: dict[int, list[list[int]]] = {}
    for condition in conditions:
        key = id(condition.tokenizer)
        if key not in tokenised:
            tokenised[key] = [condition.tokenizer.encode(d.text) for d in spec.documents]
    usable = [i for i in range(len(spec.documents)) if all(len(ids[i]) >= 2 for ids in tokenised.values())]
    short = [spec.documents[i].line for i in range(len(spec.documents)) if i not in set(usable)]
    skipped["too_short"] = len(short)
    if short:
        skipped_lines["too_short"] = short[:5]
    if not usable:
        raise ValueError("no document has two tokens or more to score; give documents with some text")
    documents = [spec.documents[i] for i in usable]
    scores: dict[str, list[DocumentScore]] = {c.name: [] for c in conditions}
    steps = [(c, i) for i in usable for c in conditions]
    iterator = steps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(steps, desc="score", unit="doc·condition")
    for condition, i in iterator:
        scores[condition.name].append(score_document(condition, spec.documents[i], tokenised[id(condition.tokenizer)][i], k=spec.k))
    chunk = conditions[0].model.config.chunk_tokens
    result = summarise(names, scores, documents, bootstrap=spec.bootstrap, seed=spec.seed, chunk_tokens=chunk)
    result["skipped"] = skipped
    result["skipped_lines"] = skipped_lines
    result["versions"] = {c.name: c.version for c in conditions if c.version}
    result["stores"] = {c.name: c.store for c in conditions if c.store}
    result["k"] = spec.k
    result["max_tokens"] = spec.max_tokens
    result["bootstrap"] = spec.bootstrap
    result["leakage"] = {"own_document": "excluded (doc id or url)", "ngram_filter": LEAK_NGRAM}
    result["documents"] = len(documents)
    dates = sorted(d.published_at for d in documents)
    result["dates"] = {"first": dates[0].isoformat(), "last": dates[-1].isoformat()}
    LOG.info("scored %d documents under %s", len(documents), ", ".join(names))
    return result


def months_spanned(result: dict) -> int:
    """How many calendar months the evaluated documents' dates cover (first to last, inclusive)."""
    first, last = result["dates"]["first"], result["dates"]["last"]
    return (int(last[:4]) - int(first[:4])) * 12 + int(last[5:7]) - int(first[5:7]) + 1
