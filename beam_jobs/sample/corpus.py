"""Training documents from sample worlds: each page as an ingest would store it, plus one note per entity.

``retrofresh site corpus`` writes these as JSONL (the demo's model is trained on them) and
``bench.temporal`` trains its sample-world models on them: worlds of the same kind as the one
evaluated, none of which states any of its facts.
"""

from __future__ import annotations

import random
from typing import Iterator

from beam_jobs.extract import ExtractionError, document_text, extract_html
from beam_jobs.sample.world import ATTRIBUTES, HISTORY_STEPS, SampleWorld


def world_documents(seed: int, size: int = 1, edition: int = 0, *, notes: bool = True, news_lead: bool = False) -> Iterator[dict]:
    """``{"text", "url", "published_at"}`` of one world's edition, one host per seed (doc ids never collide).

    Each page goes through the ingest's own extraction, so the text is what an ingest of the served
    site would store; a page the extractor refuses is left out. With ``notes``, each entity also
    gets a short note (its description, then its facts in a seeded order): text whose values can
    only be predicted by reading another document of the world, the way the demo asks about facts.
    """
    world = SampleWorld(seed, size, news_lead=news_lead)
    data = world.edition(edition)
    for path in data.document_paths():
        url = f"http://world-{seed}.sample{path}"
        try:
            text = document_text(extract_html(data.pages[path].body, "utf-8", url))
        except ExtractionError:
            continue
        published = data.pages[path].lastmod
        yield {"text": text, "url": url, "published_at": published.date().isoformat() if published else None}
    for entity in world.entities if notes else ():
        attributes = list(ATTRIBUTES[entity.kind])
        random.Random(f"{seed}:{entity.key}").shuffle(attributes)  # any fact may follow the description
        facts = " ".join(data.sentence(entity.key, attribute) for attribute in attributes)
        yield {"text": f"{world.describe(entity.key)} {facts}", "url": f"http://world-{seed}.sample/notes/{entity.key}",
               "published_at": data.date.isoformat()}


def temporal_corpus(seed: int, size: int, fresh_edition: int, *, base_url: str, pad_seeds, train_seeds) -> dict:
    """A dated corpus for a temporal evaluation of one world, with ``news_lead`` articles everywhere.

    Returns a dict: ``stale`` (url -> text of edition 0), ``fresh`` (of ``fresh_edition``, without
    the evaluated articles), ``evaluated`` (``{"text", "published_at", "url"}`` of the news
    articles published after edition 0, held out of the fresh version), ``evaluated_values``
    (url -> the new value each article reports), ``padding`` (edition 0 pages of ``pad_seeds``
    worlds: pre-cutoff text for a same-size control), ``train_extra`` (edition 0 of
    ``train_seeds`` worlds, size 1, with notes: more pre-cutoff training text, as the demo's model
    is trained on), ``cutoff``, ``fresh_adds`` (False: the later edition replaces edition 0) and
    ``setup``.

    The site keeps its news archive (retention through ``fresh_edition``): the fresh version
    holds edition 0's articles too, so the two versions differ by what changed (the facts on
    profiles and index pages, and the new articles, held out), not by the older articles'
    template text only the stale one would have.
    """
    world = SampleWorld(seed, size, news_lead=True, news_retention=HISTORY_STEPS + fresh_edition)

    def pages(w: SampleWorld, edition: int, base: str) -> dict[str, str]:
        ed = w.edition(edition)
        return {base + path: document_text(extract_html(ed.page(path, base).body, "utf-8", base + path)) for path in ed.document_paths()}

    stale = pages(world, 0, base_url)
    fresh = pages(world, fresh_edition, base_url)
    cutoff = world.edition_date(0)
    evaluated, values = [], {}
    for change in world.edition(fresh_edition).news:
        url = base_url + world.news_path(change)
        if change.date > cutoff and url in fresh:
            evaluated.append({"text": fresh.pop(url), "published_at": change.date.isoformat(), "url": url})
            values[url] = change.new
    padding: dict[str, str] = {}
    for pad_seed in pad_seeds:
        padding.update(pages(SampleWorld(pad_seed, size, news_lead=True), 0, f"http://pad-{pad_seed}.test"))
        if len(padding) >= 2 * len(fresh):  # plenty: the control takes what it needs
            break
    train_extra = {d["url"]: d["text"] for s in train_seeds for d in world_documents(s, 1, 0, news_lead=True)}
    seeds = list(train_seeds)
    return {
        "stale": stale, "fresh": fresh, "evaluated": evaluated, "evaluated_values": values, "padding": padding,
        "train_extra": train_extra, "cutoff": cutoff.isoformat(), "fresh_adds": False,
        "setup": {"seed": seed, "size": size, "stale_edition": 0, "fresh_edition": fresh_edition, "cutoff": cutoff.isoformat(),
                  "news_lead": True, "news_retention": world.news_retention, "train_worlds": f"seeds {seeds[0]}-{seeds[-1]} (size 1, edition 0, with notes)" if seeds else "none"},
    }  # fmt: skip
