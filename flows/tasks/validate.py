"""Check a new index version before it is published: checksums, counts, recall tuning, a probe search.

The probe embeds the text of a sample of the version's own chunks, exactly as the ingest job
embedded them into keys, and searches the version. Exact search has a known answer for such a
query: the chunk itself, at inner product ~1 (its own key). So the probe measures how often the
real index (IVF, several shards, tombstones) finds what exact search would find, without
re-embedding the whole corpus.

Before the probe, the version's ``nprobe`` is tuned (:mod:`model.store.tuning`): the smallest
value whose recall@k against exact search, on a sample of the version's own keys, meets the
target. When it differs from the draft's, a copy of the draft with the tuned ``search`` is written
under a new id (manifests are immutable) and that copy is the one to publish.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from model.contracts.compat import Compatibility

LOG = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The version is not fit to publish; the message lists every failed check."""


@dataclass
class ValidationReport:
    """What was checked and found."""

    version: str
    checksums: str = "not checked"
    live_chunks: int = 0
    expected_chunks: int | None = None
    documents: int = 0
    ledger_documents: int | None = None
    probes: int = 0
    probe_recall: float | None = None  # share of probes that found themselves in the top k
    probe_self_score: float | None = None  # mean score of a probe's own chunk (about 1.0)
    tombstones_returned: int = 0
    nprobe: int | None = None  # the search.nprobe the published version will carry
    recall_at_k: float | None = None  # recall@k vs exact search at that nprobe (tuning's measurement)
    recall_k: int | None = None
    recall_target: float | None = None
    publish: str | None = None  # the version to publish: this one, or its copy with the tuned nprobe
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "failures" and v is not None}
        if self.probe_recall is not None:
            out["probe_recall"] = round(self.probe_recall, 4)
        if self.probe_self_score is not None:
            out["probe_self_score"] = round(self.probe_self_score, 4)
        if self.recall_at_k is not None:
            out["recall_at_k"] = round(self.recall_at_k, 4)
        return out


def sample_chunks(view, n: int, *, seed: str) -> list[tuple[int, str]]:
    """A reproducible uniform sample of (chunk_id, text) from a version's live chunks (reservoir)."""
    rng = random.Random(seed)
    sample: list[tuple[int, str]] = []
    seen = 0
    for batch in view.iter_chunks():
        ids = batch.column("chunk_id").to_pylist()
        texts = batch.column("text").to_pylist()
        for cid, text in zip(ids, texts):
            if len(sample) < n:
                sample.append((cid, text))
            else:
                j = rng.randrange(seen + 1)
                if j < n:
                    sample[j] = (cid, text)
            seen += 1
    return sample


def probe(view, embedder, sample: list[tuple[int, str]], *, k: int, nprobe: int | None = None) -> tuple[float, float, int]:
    """Search the view with each sampled chunk's text.

    Returns:
        (recall: share of probes whose own chunk, or a chunk with the same text, is in the top k;
        mean score of the probe's own chunk where found; number of hits that are not live in the
        shard that returned them, i.e. deleted chunks that came back).
    """
    from beam_jobs.embed import threads_fitting_load

    with threads_fitting_load():  # as the ingest embedded them: one thread on an oversubscribed machine
        vectors = np.asarray(embedder.encode([text for _, text in sample]), dtype=np.float32)
    results = view.search(vectors, k, nprobe=nprobe)
    # Deleted = not live in the shard that returned it, by the view's own definition (a chunk id
    # deleted and later re-added by a newer shard is live there), never a second copy of the rule.
    ids, _, shards = view.search_scored(vectors, k, nprobe=nprobe)
    returned = ids >= 0
    dead = int((~view.is_live(ids[returned], shards[returned])).sum())
    found, scores = 0, []
    for (cid, text), hits in zip(sample, results):
        own = next((h for h in hits if h.chunk_id == cid or h.text == text), None)
        if own is not None:
            found += 1
            scores.append(own.score)
    return found / len(sample), float(np.mean(scores)) if scores else 0.0, dead


def probe_embedder(path: str | None, max_length: int):
    """The encoder to probe with: the process's shared one, the ingest's when it ran here.

    At the settings' precision, the one the flows' ingest runs at: Beam's Shared keeps one encoder
    per tag and replaces it when another tag asks, so probing at another precision would make a
    long-lived process load the encoder twice per refresh.
    """
    from beam_jobs.embed import shared_embedder
    from model.contracts.settings import get_settings

    return shared_embedder(path, max_length=max_length, precision=get_settings().precision)


def validate(
    store,
    version: str,
    *,
    parent: str | None,
    chunks_added: int | None = None,
    chunks_removed: int | None = None,
    probe_queries: int = 16,
    k: int = 8,
    min_recall: float = 0.9,
    min_self_score: float = 0.98,
    embedder_path: str | None = None,
    recall_target: float | None = 0.95,
    recall_k: int = 2,
    recall_queries: int = 200,
) -> ValidationReport:
    """Check a version and raise if it is unfit.

    Args:
        store: the :class:`model.store.Store`.
        version: the draft to check.
        parent: the version it will replace (its live count anchors the count check).
        chunks_added, chunks_removed: what the ingest reported; None skips the count arithmetic
            (compaction keeps the count, which is checked against the parent instead).
        probe_queries: chunks to probe with (0 skips the probe).
        k: neighbours per probe.
        min_recall: least share of probes that must find themselves.
        min_self_score: least mean score of a probe's own chunk (the keys were made by the same
            embedder from the same text, so this is about 1.0; less means other keys).
        embedder_path: the encoder that made the keys; None for the bundled one.
        recall_target: tune ``search.nprobe`` to the smallest value with recall@``recall_k`` at
            least this against exact search (None: keep the draft's nprobe).
        recall_k, recall_queries: neighbours per query and sampled keys for the tuning.

    Returns:
        The report; ``publish`` names the version to publish (a tuned copy when nprobe changed).

    Raises:
        ValidationFailed: any check failed (all failures are listed).
        ChecksumMismatch, StoreError: a file is missing or corrupt.
    """
    report = ValidationReport(version)
    manifest = store.verify(version)
    report.checksums = f"ok ({len(manifest.shards)} shards{', ledger' if manifest.ledger else ''})"
    parent_manifest = store.manifest(parent) if parent else None
    with store.open(version) as view:
        report.nprobe = manifest.search.nprobe
        if recall_target is not None:
            tuning = store.tune(view=view, target=recall_target, k=recall_k, queries=recall_queries)
            report.nprobe, report.recall_at_k = tuning.nprobe, tuning.recall
            report.recall_k, report.recall_target = tuning.k, tuning.target
            if not tuning.met:
                report.failures.append(f"recall@{tuning.k} {tuning.recall:.3f} < {recall_target} even at nprobe {tuning.nprobe}")
        report.live_chunks = view.count
        report.documents = manifest.stats.documents
        if view.count != manifest.stats.chunks:
            report.failures.append(f"the manifest says {manifest.stats.chunks} live chunks, the shards hold {view.count}")
        parent_chunks = parent_manifest.stats.chunks if parent_manifest else 0
        if chunks_added is not None and chunks_removed is not None:
            report.expected_chunks = parent_chunks + chunks_added - chunks_removed
        if report.expected_chunks is not None and report.expected_chunks != view.count:
            report.failures.append(
                f"{parent_chunks} chunks in {parent or 'an empty store'} + {chunks_added} added - {chunks_removed} "
                f"removed = {report.expected_chunks}, but {version} holds {view.count}"
            )
        if manifest.ledger is not None:
            report.ledger_documents = store.read_ledger(version).num_rows
            if report.ledger_documents != manifest.stats.documents:
                report.failures.append(f"the manifest says {manifest.stats.documents} documents, the ledger lists {report.ledger_documents}")
        if probe_queries > 0 and view.count > 0:
            embedder = probe_embedder(embedder_path, manifest.embedder.max_length)
            Compatibility.of(embedder=embedder.spec, source="the probe embedder", kind="run").check(
                Compatibility.of_manifest(manifest), terms=("embedder",), error=ValidationFailed,
                fix="probe with the encoder that made its keys",
            )
            sample = sample_chunks(view, probe_queries, seed=version)
            report.probes = len(sample)
            report.probe_recall, report.probe_self_score, report.tombstones_returned = probe(view, embedder, sample, k=min(k, view.count), nprobe=report.nprobe)
            if report.probe_recall < min_recall:
                report.failures.append(f"probe recall {report.probe_recall:.2f} < {min_recall}: the index does not find chunks exact search finds")
            if report.probe_self_score < min_self_score:
                report.failures.append(f"probe self-score {report.probe_self_score:.3f} < {min_self_score}: keys do not match the embedder")
            if report.tombstones_returned:
                report.failures.append(f"{report.tombstones_returned} deleted chunks came back from search")
    if report.failures:
        raise ValidationFailed(f"version {version} failed validation: " + "; ".join(report.failures))
    report.publish = version
    if report.nprobe != manifest.search.nprobe:
        # The draft stays as written; its copy with the tuned search is what gets published.
        tuned = manifest.retuned(version=store.new_version_id(), nprobe=report.nprobe, parent=manifest.parent)
        store.write_manifest(tuned)
        report.publish = tuned.version
        LOG.info("%s: nprobe %d -> %d (recall@%d %.3f) written as %s", version, manifest.search.nprobe, report.nprobe,
                 report.recall_k, report.recall_at_k, tuned.version)
    LOG.info("validated %s: %s", version, report.summary())
    return report


@task(name="validate-version", cache_policy=NO_CACHE)
def validate_version(store_uri: str, version: str, **kwargs) -> dict:
    """Prefect task around :func:`validate`; returns the report's summary for the artifacts."""
    from model.store import open_store

    return validate(open_store(store_uri), version, **kwargs).summary()
