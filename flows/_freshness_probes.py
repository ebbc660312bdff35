"""Freshness probes for ``evaluate_freshness`` (its only user): does an index version retrieve the sample world's facts as they are now?

For every fact the world changed up to an edition, a probe searches a version with the fact's
prompt ("The mayor of Varenholm is") and reads the top-k neighbours: **fresh** when one states the
value as of that edition, **stale** when they state only an older value, **missing** otherwise.
With a RETRO server, the model's score also says whether it prefers the new value to the old one
(lower total loss of the sentence with the new value).
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np

from model.evaluation.figures import figure_png

LOG = logging.getLogger(__name__)

OUTCOMES = ("fresh", "stale", "missing")


@dataclass(frozen=True)
class FactProbe:
    """One changed fact: how to ask for it and which answers are current or outdated."""

    entity: str
    kind: str
    attribute: str
    prompt: str
    current: str  # the value as of the evaluated edition
    older: tuple[str, ...]  # values it had before, newest first
    changed_in: int  # the edition of its latest change

    def sentence(self, value: str) -> str:
        from beam_jobs.sample.world import fact_sentence

        return fact_sentence(self.kind, self.attribute, self.entity, value)


def fact_probes(world, edition: int) -> list[FactProbe]:
    """A probe per fact that changed in editions 1..``edition``, with its value as of ``edition``.

    Args:
        world: a :class:`beam_jobs.sample.world.SampleWorld`.
        edition: the edition whose facts are the truth.
    """
    if edition < 1:
        raise ValueError(f"no fact has changed by edition {edition}; evaluate edition 1 or later")
    truth = world.facts_as_of(edition)
    changes: dict[tuple[str, str], list] = {}
    for number in range(1, edition + 1):
        for change in world.changed_facts(number):
            changes.setdefault((change.entity, change.attribute), []).append((number, change))
    probes = []
    for (entity, attribute), history in sorted(changes.items()):
        last_number, last = history[-1]
        current = truth[(entity, attribute)]
        older = tuple(dict.fromkeys(c.old for _, c in reversed(history) if c.old != current))
        probes.append(FactProbe(entity, last.kind, attribute, last.prompt, current, older, last_number))
    return probes


def _states(text: str, probe: FactProbe, value: str) -> bool:
    # The canonical sentence, or (when a chunk boundary cut it) the entity and the value together.
    return probe.sentence(value) in text or (probe.entity in text and re.search(rf"\b{re.escape(value)}\b", text) is not None)


def classify(texts: list[str], probe: FactProbe) -> str:
    """fresh / stale / missing for one probe's retrieved texts."""
    if any(_states(t, probe, probe.current) for t in texts):
        return "fresh"
    if any(_states(t, probe, old) for t in texts for old in probe.older):
        return "stale"
    return "missing"


def evaluate_view(view, query_vectors: np.ndarray, probes: list[FactProbe], *, k: int) -> list[str]:
    """The outcome of each probe against one index version."""
    if view.count == 0:
        return ["missing"] * len(probes)
    results = view.search(query_vectors, min(k, view.count))
    return [classify([n.text for n in hits], probe) for probe, hits in zip(probes, results)]


@dataclass
class VersionScore:
    """Freshness of one version."""

    version: str
    created_at: str
    current: bool
    outcomes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {o: self.outcomes.count(o) for o in OUTCOMES}

    @property
    def freshness(self) -> float:
        return self.outcomes.count("fresh") / len(self.outcomes) if self.outcomes else 0.0

    def row(self) -> dict:
        return {"version": self.version, "created_at": self.created_at, "current": self.current,
                "facts": len(self.outcomes), **self.counts, "freshness": round(self.freshness, 3)}


def server_nats(client) -> Callable[[str], float]:
    """Total loss of a text (mean loss x predicted tokens) under a served model, retrieval on."""

    def nats(text: str) -> float:
        answer = client.score(text, retrieval=True)
        return answer.loss * answer.tokens

    return nats


class ViewRetriever:
    """A :class:`model.contracts.retrieval.Retriever` over one index version and the embedder of its keys."""

    def __init__(self, view, embedder):
        self.view, self.embedder = view, embedder

    def retrieve(self, texts, k, *, exclude_doc_ids=None):
        if not texts:
            return []
        return self.view.search(self.embedder.encode(list(texts)), k, exclude_doc_ids=exclude_doc_ids)


def checkpoint_nats(model, tokenizer, retriever) -> Callable[[str], float]:
    """Total loss of a text under a local checkpoint, retrieving from ``retriever``."""
    from model.network.scoring import score

    def nats(text: str) -> float:
        result = score(model, tokenizer, text, retriever=retriever)
        return result.loss * result.tokens

    return nats


def model_prefers_new(nats: Callable[[str], float], probe: FactProbe) -> bool | None:
    """Whether the model finds the sentence with the current value likelier than with the last old one."""
    if not probe.older:
        return None
    return nats(probe.sentence(probe.current)) < nats(probe.sentence(probe.older[0]))


def plot_freshness(scores: list[VersionScore], path: Path) -> bytes:
    """Draw freshness (share of fresh facts) per version, oldest first; write a PNG and return its bytes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.2), dpi=100)
    axes = figure.subplots()
    x = np.arange(len(scores))
    for outcome, colour in zip(OUTCOMES, ("tab:green", "tab:orange", "tab:gray")):
        share = [s.counts[outcome] / max(1, len(s.outcomes)) for s in scores]
        axes.plot(x, share, marker="o", color=colour, label=outcome)
    current = [i for i, s in enumerate(scores) if s.current]
    if current:
        axes.axvline(current[0], color="tab:blue", linestyle=":", label="CURRENT")
    axes.set_xticks(x, [s.version.split("-")[0] for s in scores], rotation=45, ha="right", fontsize=7)
    axes.set_ylim(-0.05, 1.05)
    axes.set_ylabel("share of changed facts")
    axes.set_title("Retrieval freshness by index version")
    axes.legend(fontsize=7, loc="center left")
    figure.tight_layout()
    return figure_png(figure, path)


def png_markdown(png: bytes, path: Path, scores: list[VersionScore]) -> str:
    """Markdown embedding the plot (a data URI, so the UI shows it without serving the file)."""
    encoded = base64.b64encode(png).decode("ascii")
    latest = scores[-1] if scores else None
    lines = ["# Freshness over versions", ""]
    if latest:
        lines.append(f"Newest version {latest.version}: {latest.counts['fresh']} of {len(latest.outcomes)} changed facts fresh.")
    lines += ["", f"![freshness by version](data:image/png;base64,{encoded})", "", f"Written to `{path}`."]
    return "\n".join(lines) + "\n"


def edition_from_sitemap(site_url: str, world, *, timeout_s: float = 10.0) -> int:
    """The edition a sample site serves, from its sitemap: the newest ``lastmod`` is the edition's date.

    Raises:
        ValueError: no lastmod, or a date that is no edition of this world (another seed?).
    """
    import httpx

    from urllib.parse import urljoin

    response = httpx.get(urljoin(site_url, "/sitemap.xml"), timeout=timeout_s)
    response.raise_for_status()
    dates = [date.fromisoformat(d[:10]) for d in re.findall(r"<lastmod>([^<]+)</lastmod>", response.text)]
    if not dates:
        raise ValueError(f"{site_url}/sitemap.xml has no <lastmod>; pass the edition explicitly")
    newest = max(dates)
    for number in range(0, 10_000):
        when = world.edition_date(number)
        if when == newest:
            return number
        if when > newest:
            break
    raise ValueError(f"{newest} (newest lastmod of {site_url}) is no edition date of sample world seed {world.seed}; pass the edition explicitly")
