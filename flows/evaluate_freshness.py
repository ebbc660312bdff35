"""``evaluate_freshness``: how many of the sample world's changed facts each index version retrieves fresh.

Leaves a table per version (fresh / stale / missing), a table per fact for the newest version
(with the model's preference when a server or checkpoint is given), and a freshness plot.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from prefect import flow, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common.inputs import resolve_inputs
from flows.common.retry import IO_RETRIES, QUICK_RETRIES
from flows.tasks.artifacts import record_summary
from flows._freshness_probes import (
    FactProbe,
    VersionScore,
    ViewRetriever,
    checkpoint_nats,
    edition_from_sitemap,
    evaluate_view,
    fact_probes,
    model_prefers_new,
    plot_freshness,
    png_markdown,
    server_nats,
)

LOG = logging.getLogger(__name__)

FRESHNESS_VERSIONS = "freshness-versions"
FRESHNESS_FACTS = "freshness-facts"
FRESHNESS_PLOT = "freshness-plot"
FRESHNESS_SUMMARY = "freshness-summary"


@flow(name="evaluate-freshness", description="Does each index version retrieve the sample world's changed facts as they are now?")
def evaluate_freshness(
    store: str | None = None,
    edition: int | None = None,
    site_url: str | None = None,
    seed: int = 0,
    size: int = 1,
    k: int = 4,
    last_versions: int = 10,
    server: str | None = None,
    checkpoint: str | None = None,
    output_dir: str | None = None,
    embedder_path: str | None = None,
) -> dict:
    """Evaluate retrieval freshness over the newest versions of a store.

    The evaluation exists only for the sample world. Its truth is ``edition``, else the edition a
    sample site serves: ``site_url``, else the first site of the store's sources whose sitemap
    dates an edition of the world. Sources without a sample site: the run records that there is
    nothing to evaluate and succeeds.

    Args:
        store: the index store (default ``RETROFRESH_STORE``).
        edition: the sample-world edition that is the truth.
        site_url: a running sample site (its sitemap dates the edition it serves).
        seed, size: the sample world (as ``retrofresh site serve`` was given).
        k: neighbours read per fact.
        last_versions: how many of the newest versions to evaluate.
        server: a RETRO server URL; its model scores the new against the old value.
        checkpoint: a RETRO checkpoint to score with instead of a server (retrieving from CURRENT).
        output_dir: where the plot PNG goes (default ``<cache_dir>/evaluations``).
        embedder_path: the encoder of the store's keys (default: the bundled one).

    Returns:
        Rows per version and the newest version's freshness.
    """
    inputs = resolve_inputs(store)
    probes = changed_facts(seed, size, edition, site_url, inputs.sources)
    if probes is None:
        record_summary(FRESHNESS_SUMMARY, "Freshness evaluation", {"skipped": f"no sample site among the sources {inputs.sources}"})
        return {"facts": 0, "versions": [], "freshness": None, "skipped": True}
    scores = score_versions(inputs.store, probes, k=k, last_versions=last_versions, embedder_path=embedder_path)
    preferences = score_preferences(inputs.store, probes, server, checkpoint, embedder_path) if (server or checkpoint) else None
    plot = plot_path(output_dir)
    record_freshness_artifacts(scores, probes, preferences, plot)
    newest = scores[-1] if scores else None
    return {"facts": len(probes), "versions": [s.row() for s in scores], "freshness": newest.freshness if newest else None,
            "model_scored": sum(1 for p in preferences or [] if p is not None),
            "model_prefers_new": sum(1 for p in preferences or [] if p), "plot": str(plot)}


def plot_path(output_dir: str | None) -> Path:
    """Where this run's plot goes: one file per flow run, next to the others."""
    from model.contracts.settings import get_settings

    base = Path(output_dir) if output_dir else get_settings().cache_dir / "evaluations"
    return base / f"freshness-{runtime.flow_run.id or 'local'}.png"


@task(name="list-changed-facts", **IO_RETRIES)
def changed_facts(seed: int, size: int, edition: int | None, site_url: str | None, sources: str | None) -> list[FactProbe] | None:
    """The probes: every fact the world changed up to the edition that is the truth.

    Returns:
        The probes, or None when the sources hold no sample site (nothing to evaluate).

    Raises:
        ValueError: no edition, no site and no sources to look for one in.
    """
    from beam_jobs.sample.world import SampleWorld

    world = SampleWorld(seed, size)
    if edition is None and site_url:
        edition = edition_from_sitemap(site_url, world)
    if edition is None:
        if not sources:
            raise ValueError("pass edition=N (the sample-world edition that is the truth), site_url= of a running "
                             "sample site, or sources= (RETROFRESH_SOURCES) that crawl one")
        edition = edition_from_sources(sources, world)
        if edition is None:
            return None
    return fact_probes(world, edition)


def edition_from_sources(sources: str, world) -> int | None:
    """The edition served by the first site source that is this sample world (None: no such site)."""
    from beam_jobs.sources import load_sources

    for source in load_sources(sources).sources:
        for url in getattr(source, "start_urls", None) or []:
            try:
                return edition_from_sitemap(url, world)
            except (ValueError, OSError, httpx.HTTPError) as error:  # not the sample world, or not up
                LOG.info("%s is not a sample site of seed %d: %s", url, world.seed, error)
    return None


@task(name="score-versions", **IO_RETRIES)
def score_versions(store_uri: str, probes: list[FactProbe], *, k: int, last_versions: int, embedder_path: str | None) -> list[VersionScore]:
    """Fresh / stale / missing per probe, for each of the newest versions (oldest first)."""
    from model.contracts.embedder import Embedder
    from model.store import open_store

    store = open_store(store_uri)
    current = store.current()
    manifests = store.versions()[-last_versions:]
    if not manifests:
        return []
    embedder = Embedder(embedder_path, max_length=manifests[-1].embedder.max_length)
    queries = embedder.encode([p.prompt for p in probes])
    scores = []
    for manifest in manifests:
        with store.open(manifest.version, embedder=embedder.spec) as view:
            outcomes = evaluate_view(view, queries, probes, k=k)
        scores.append(VersionScore(manifest.version, manifest.created_at.isoformat(), manifest.version == current, outcomes))
    return scores


@task(name="score-preferences", **IO_RETRIES)
def score_preferences(store_uri: str, probes: list[FactProbe], server: str | None, checkpoint: str | None, embedder_path: str | None) -> list[bool | None]:
    """Per probe, whether the model prefers the current value (None: the fact has no older value)."""
    if server:
        from model.client import RetroClient

        with RetroClient(server, timeout=120) as client:
            return [model_prefers_new(server_nats(client), p) for p in probes]
    from model.contracts.embedder import Embedder
    from model.network.checkpoint import load_checkpoint
    from model.store import open_store

    model, tokenizer = load_checkpoint(checkpoint)
    embedder = Embedder(embedder_path)
    with open_store(store_uri).open(None, embedder=embedder.spec) as view:
        nats = checkpoint_nats(model, tokenizer, ViewRetriever(view, embedder))
        return [model_prefers_new(nats, p) for p in probes]


@task(name="record-freshness-artifacts", **QUICK_RETRIES)
def record_freshness_artifacts(scores: list[VersionScore], probes: list[FactProbe], preferences: list | None, plot: Path) -> None:
    """Table per version, table per fact (newest version), and the plot as markdown."""
    create_table_artifact([s.row() for s in scores], key=FRESHNESS_VERSIONS, description="Changed facts retrieved fresh, stale or missing, per version")
    if scores:
        newest = scores[-1]
        rows = [
            {"fact": p.prompt, "now": p.current, "before": ", ".join(p.older), "changed_in_edition": p.changed_in,
             "retrieved": outcome, **({"model_prefers_new": pref} if preferences is not None else {})}
            for p, outcome, pref in zip(probes, newest.outcomes, preferences or [None] * len(probes))
        ]
        create_table_artifact(rows, key=FRESHNESS_FACTS, description=f"Each changed fact against {newest.version}")
    create_markdown_artifact(png_markdown(plot_freshness(scores, plot), plot, scores), key=FRESHNESS_PLOT, description="Freshness over versions")
