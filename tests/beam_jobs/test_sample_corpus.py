"""The sample world's temporal corpus (what bench.temporal evaluates on) and its training documents."""

import pytest

from beam_jobs.extract import document_text, extract_html
from beam_jobs.sample.corpus import temporal_corpus, world_documents
from beam_jobs.sample.world import HEADLINES, SampleWorld
from model.contracts.tokenizer import RetroTokenizer
from model.evaluation.versions import STALE_COPY_QUERY, training_documents

BASE = "http://sample.test"
CHUNK = 64  # RETRO retrieves for the previous chunk: a document's first 64 tokens see no neighbours


@pytest.fixture(scope="module")
def corpus():
    return temporal_corpus(0, 1, 4, base_url=BASE, pad_seeds=range(1000, 1001), train_seeds=range(1, 3))


def first_token_of(tokenizer, text: str, value: str) -> int:
    return len(tokenizer.encode(text[: text.index(value)]))


def test_evaluated_articles_state_their_new_value_after_the_first_chunk(corpus):
    tokenizer = RetroTokenizer.load()
    assert len(corpus["evaluated"]) >= 4
    for doc in corpus["evaluated"]:
        value = corpus["evaluated_values"][doc["url"]]
        assert value in doc["text"]
        assert first_token_of(tokenizer, doc["text"], value) >= CHUNK, doc["text"][:300]
        assert doc["url"] not in corpus["fresh"] and doc["published_at"] > corpus["cutoff"]
    # and the fresh index states each value somewhere (the profiles), the stale one not always
    fresh_text = "\n".join(corpus["fresh"].values())
    assert all(value in fresh_text for value in corpus["evaluated_values"].values())


def test_the_fresh_version_keeps_the_articles_the_stale_one_has(corpus):
    # Otherwise fresh vs stale compares "no article at all" with "articles of the same template".
    stale_articles = {u for u in corpus["stale"] if "/news/" in u and not u.endswith("/news/")}
    assert stale_articles and stale_articles <= set(corpus["fresh"])
    assert all(corpus["fresh"][u] == corpus["stale"][u] for u in stale_articles)


def test_without_a_lead_the_value_is_in_the_first_chunk_and_the_default_site_is_unchanged():
    # What the evaluation had before news_lead, and what the demo's site still serves.
    tokenizer = RetroTokenizer.load()
    world = SampleWorld(0, 1)
    edition = world.edition(4)
    for change in edition.news:
        path = world.news_path(change)
        text = document_text(extract_html(edition.page(path, BASE).body, "utf-8", BASE + path))
        assert text.startswith(HEADLINES[(change.kind, change.attribute)].format(name=change.entity, value=change.new))
        assert first_token_of(tokenizer, text, change.new) < CHUNK
        assert world.describe(change.entity_key) not in text


def test_news_lead_changes_only_the_articles_and_their_links():
    plain, lead = SampleWorld(0, 1).edition(2), SampleWorld(0, 1, news_lead=True).edition(2)
    article_pages = {p for p in plain.pages if p.startswith("/news/")} - {"/news/"}
    linking = {"/", "/news/", "/feed.xml"}  # they list the headlines
    same = set(plain.pages) - article_pages - linking
    assert same and all(plain.pages[p].body == lead.pages[p].body for p in same)
    assert len([p for p in lead.pages if p.startswith("/news/")]) == len(article_pages) + 1


def test_the_retrained_controls_training_data_holds_the_stale_and_the_fresh_documents(corpus):
    train, retrain = training_documents(corpus["stale"], corpus["fresh"], corpus["train_extra"],
                                        held_out=[d["url"] for d in corpus["evaluated"]])
    changed = [u for u, t in corpus["stale"].items() if corpus["fresh"].get(u, t) != t]
    assert changed  # profiles whose facts changed between edition 0 and 4
    for texts in (train, retrain):
        assert set(corpus["stale"].values()) <= set(texts.values())  # edition 0, every page
        assert set(corpus["train_extra"].values()) <= set(texts.values())  # the other worlds
    assert set(corpus["fresh"].values()) <= set(retrain.values())  # the later edition too
    stale_texts = set(corpus["stale"].values())
    assert not [t for t in corpus["fresh"].values() if t not in stale_texts and t in train.values()]
    assert all(u + "?" + STALE_COPY_QUERY in retrain for u in changed)
    assert not {d["text"] for d in corpus["evaluated"]} & set(retrain.values())
    with pytest.raises(ValueError, match="evaluated documents are in the training data"):
        training_documents(corpus["stale"], {**corpus["fresh"], corpus["evaluated"][0]["url"]: "x"},
                           held_out=[corpus["evaluated"][0]["url"]])


def test_world_documents_are_what_site_corpus_writes(tmp_path):
    import json

    from click.testing import CliRunner

    from beam_jobs.commands import site

    out = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(site, ["corpus", "--seeds", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == list(world_documents(3))
    assert sum(d["url"].startswith("http://world-3.sample/notes/") for d in written) == len(SampleWorld(3, 1).entities)
