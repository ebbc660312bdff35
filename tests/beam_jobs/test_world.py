"""The sample world: deterministic, facts in several documents, known changes between editions."""

from __future__ import annotations

import re

import pytest

from beam_jobs.extract import extract_html
from beam_jobs.sample.world import PRIVATE_PATH, SampleWorld, fact_sentence


def test_editions_are_deterministic_from_the_seed():
    a, b = SampleWorld(3, 1).edition(2), SampleWorld(3, 1).edition(2)
    assert {p: x.body for p, x in a.pages.items()} == {p: x.body for p, x in b.pages.items()}
    c = SampleWorld(4, 1).edition(2)
    assert {p: x.body for p, x in a.pages.items()} != {p: x.body for p, x in c.pages.items()}


def test_editions_do_not_depend_on_the_order_they_are_built_in():
    direct = SampleWorld(5, 1).edition(3)
    stepwise = SampleWorld(5, 1)
    for n in range(4):
        stepwise.edition(n)
    assert {p: x.body for p, x in direct.pages.items()} == {p: x.body for p, x in stepwise.edition(3).pages.items()}


def test_every_fact_is_stated_in_at_least_two_documents():
    edition = SampleWorld(0, 1).edition(0)
    for entity in edition.world.entities:
        for (key, attribute), value in edition.facts.items():
            if key != entity.key:
                continue
            sentence = fact_sentence(entity.kind, attribute, entity.name, value)
            holders = [p for p in edition.document_paths() if sentence in edition.pages[p].body.decode()]
            assert len(holders) >= 2, (sentence, holders)
            assert set(holders) >= set(edition.paths_with(key, attribute))


def test_changed_facts_say_what_changed_and_where_it_now_stands():
    world = SampleWorld(0, 1)
    e0, e1 = world.edition(0), world.edition(1)
    changes = world.changed_facts(1)
    assert len(changes) == world.changes_per_edition
    for change in changes:
        assert e0.facts[(change.entity_key, change.attribute)] == change.old != change.new
        assert e1.facts_as_of[(change.entity, change.attribute)] == change.new
        assert change.sentence.startswith(change.prompt + " ") and change.sentence.endswith(change.new + ".")
        assert e0.date < change.date <= e1.date
        assert len(change.paths) >= 3  # profile, index page, news article (and sometimes more)
        for path in change.paths:
            assert change.sentence in e1.pages[path].body.decode()
            old = e0.pages.get(path)
            assert old is None or change.sentence not in old.body.decode()


def test_next_edition_adds_and_removes_pages():
    world = SampleWorld(0, 1)
    before, after = set(world.edition(0).pages), set(world.edition(1).pages)
    added, removed = after - before, before - after
    assert added and removed
    assert all(p.startswith("/news/") for p in added | removed)


def test_lastmod_moves_only_when_a_page_changes():
    world = SampleWorld(0, 1)
    e0, e1 = world.edition(0), world.edition(1)
    for path in set(e0.pages) & set(e1.pages):
        same = e0.pages[path].body == e1.pages[path].body
        assert (e1.pages[path].lastmod == e0.pages[path].lastmod) == same, path


def test_sitemap_feed_and_robots_use_the_base_url():
    edition = SampleWorld(0, 1).edition(0)
    base = "http://127.0.0.1:8123"
    sitemap = edition.page("/sitemap.xml", base).body.decode()
    locs = re.findall(r"<loc>(.*?)</loc>", sitemap)
    assert sorted(locs) == sorted(edition.document_urls(base))
    assert base + PRIVATE_PATH not in locs
    assert f"Disallow: /private/" in edition.page("/robots.txt", base).body.decode()
    feed = edition.page("/feed.xml", base).body.decode()
    assert feed.count("<item>") == len(edition.news) and base + "/news/" in feed


def test_profiles_extract_to_text_that_states_their_facts():
    edition = SampleWorld(0, 1).edition(0)
    entity = edition.world.entities[0]
    page = edition.pages[entity.path]
    text = extract_html(page.body, "utf-8", "http://x" + entity.path).text
    assert edition.sentence(entity.name, "mayor") in text


@pytest.mark.parametrize("size", [1, 3])
def test_size_scales_the_world(size):
    world = SampleWorld(0, size)
    assert len(world.entities) == 16 * size
    assert len(world.edition(0).document_paths()) > 20 * size


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="size"):
        SampleWorld(0, 0)
    with pytest.raises(ValueError, match="editions start at 0"):
        SampleWorld(0, 1).edition(-1)
