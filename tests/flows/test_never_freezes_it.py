"""Everyday source events that once froze the whole store, end to end through ``retrofresh refresh``.

- A document that leaves and comes back with the same content: chunk ids hash (document,
  position, content), so it gets back the ids its deletion tombstoned; every later refresh must
  still publish.
- A file caught mid-rewrite: skipped and reported, its documents kept, never deleted.
- A source that suddenly lists nothing: its deletions refused by the guard, the others publish.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flows.cli import cli
from model.store import open_store
from tests.fixtures.rewrites import writer_between_open_and_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = "alpha beta gamma delta river stone cloud market engine garden harbour lantern meadow orbit".split()


def text(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(words)) + "\n"


def refresh(sources: Path, store: Path, *args: str, stderr: list | None = None) -> dict:
    """``retrofresh refresh --json``; the summary (exit 0), or the failure's JSON (exit 1)."""
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(sources), "--store", str(store), "--json", *args])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == (1 if "error" in out else 0), result.output
    if stderr is not None:
        stderr.append(result.stderr)
    return out


def files_sources(path: Path, **globs: Path) -> Path:
    path.write_text(yaml.safe_dump({"sources": [{"kind": "files", "name": name, "glob": str(glob)} for name, glob in globs.items()]}))
    return path


def live_urls(store: Path) -> set[str]:
    opened = open_store(store)
    return set(opened.read_ledger(opened.current()).column("url").to_pylist())


def test_a_file_moved_away_and_back_is_published_again_and_later_refreshes_publish(prefect_api, tmp_path):
    docs, away = tmp_path / "docs", tmp_path / "away"
    docs.mkdir(), away.mkdir()
    for n in range(3):
        (docs / f"d{n}.txt").write_text(text(n))
    sources = files_sources(tmp_path / "sources.yaml", notes=docs / "*.txt")
    store = tmp_path / "store"

    first = refresh(sources, store)
    assert first["published"] and first["documents"]["new"] == 3
    (docs / "d1.txt").rename(away / "d1.txt")
    gone = refresh(sources, store)
    assert gone["published"] and gone["documents"]["deleted"] == 1 and len(live_urls(store)) == 2
    (away / "d1.txt").rename(docs / "d1.txt")
    back = refresh(sources, store)
    assert "error" not in back, back
    assert back["published"] and back["documents"]["new"] == 1 and back["validation"]["tombstones_returned"] == 0
    assert live_urls(store) == {str(docs / f"d{n}.txt") for n in range(3)}
    assert open_store(store).manifest().stats.chunks == first["chunks_added"]

    (docs / "d3.txt").write_text(text(3))
    later = refresh(sources, store)
    assert "error" not in later, later
    assert later["published"] and later["documents"]["new"] == 1
    assert live_urls(store) == {str(docs / f"d{n}.txt") for n in range(4)}
    with open_store(store).open() as view:
        assert view.count == open_store(store).manifest().stats.chunks


def test_a_jsonl_file_caught_mid_rewrite_is_skipped_and_reported_and_keeps_its_documents(prefect_api, tmp_path, monkeypatch):
    """A writer truncates the file as the refresh opens it and writes the same bytes back as it closes it."""
    import os

    docs = tmp_path / "docs"
    docs.mkdir()
    feed = docs / "a.jsonl"
    body = "".join(json.dumps({"id": n, "text": text(100 + n, 40)}) + "\n" for n in range(20)).encode()
    feed.write_bytes(body)
    (docs / "b.txt").write_text(text(1))
    sources = files_sources(tmp_path / "sources.yaml", docs=docs / "*")
    store = tmp_path / "store"
    # The deletion guard would refuse losing 20 of 21 documents too: this test is about the read alone.
    assert refresh(sources, store, "--max-delete-share", "1")["documents"]["new"] == 21

    os.utime(feed, (1_600_000_000, 1_600_000_000))  # listed in the past: the rewrite moves mtime
    (docs / "c.txt").write_text(text(2))  # another change, which must publish
    stderr: list[str] = []
    # The writer truncates the file as the refresh opens it and rewrites it when the read ends.
    with writer_between_open_and_close(monkeypatch, feed, then=body):
        caught = refresh(sources, store, "--max-delete-share", "1", stderr=stderr)
    assert "error" not in caught, caught
    assert caught["published"] and caught["documents"]["new"] == 1 and caught["documents"]["deleted"] == 0
    assert caught["failures"] == {"changed_while_read": 1}
    assert "changed while read" in stderr[0]
    assert len(live_urls(store)) == 22

    again = refresh(sources, store)  # the writer is done: the same bytes, nothing to publish
    assert "error" not in again and not again["published"] and again["documents"]["unchanged"] == 22


def test_a_source_that_lists_nothing_keeps_its_documents_and_the_other_sources_publish(prefect_api, tmp_path):
    notes, more, away = tmp_path / "notes", tmp_path / "more", tmp_path / "away"
    for folder in (notes, more, away):
        folder.mkdir()
    for n in range(2):
        (notes / f"n{n}.txt").write_text(text(n))
    (more / "m0.txt").write_text(text(10))
    sources = files_sources(tmp_path / "sources.yaml", notes=notes / "*.txt", more=more / "*.txt")
    store = tmp_path / "store"
    assert refresh(sources, store)["documents"]["new"] == 3

    for path in notes.iterdir():  # an unmounted disk, an emptied bucket: the listing is empty
        path.rename(away / path.name)
    (more / "m1.txt").write_text(text(11))
    stderr: list[str] = []
    guarded = refresh(sources, store, stderr=stderr)
    assert "error" not in guarded, guarded
    assert guarded["published"] and guarded["documents"]["new"] == 1 and guarded["documents"]["deleted"] == 0
    assert [f["source"] for f in guarded["failed_sources"]] == ["notes"]
    message = guarded["failed_sources"][0]["error"]
    assert "would lose 2 of its 2 documents" in message and "--max-delete-share 1" in message
    assert "source failed" in stderr[0] and "--max-delete-share" in stderr[0]
    assert live_urls(store) == {str(notes / "n0.txt"), str(notes / "n1.txt"), str(more / "m0.txt"), str(more / "m1.txt")}
    with open_store(store).open() as view:
        assert view.count == open_store(store).manifest().stats.chunks

    forced = refresh(sources, store, "--max-delete-share", "1")  # the user says the source really lost them
    assert forced["published"] and forced["documents"]["deleted"] == 2 and not forced["failed_sources"]
    assert live_urls(store) == {str(more / "m0.txt"), str(more / "m1.txt")}


def test_a_page_removed_in_one_edition_and_restored_in_the_next_is_published_and_later_editions_publish(prefect_api, sample_site, tmp_path):
    """The sample site: a page that answers 404 in edition 1 is back, unchanged, in edition 2."""
    from tests.flows.support import write_sources

    site = sample_site(0)
    world = site.world
    editions = [world.edition(n) for n in range(4)]
    # A page whose text no edition changes: restored, it has exactly its old chunk ids.
    page = next(p for p in editions[0].document_paths() if p != "/about.html"
                and all(p in e.pages and e.pages[p].body == editions[0].pages[p].body for e in editions))
    url = site.base_url + page
    sources = write_sources(tmp_path / "sources.yaml", site.base_url)
    store = tmp_path / "store"
    assert refresh(sources, store)["published"] and url in live_urls(store)

    served = site.set_edition(1, without=[page])
    removed = refresh(sources, store)
    assert "error" not in removed, removed
    assert removed["published"] and removed["documents"]["deleted"] >= 1 and url not in live_urls(store)
    assert live_urls(store) == set(served.document_urls(site.base_url))

    site.set_edition(2)
    restored = refresh(sources, store)
    assert "error" not in restored, restored
    assert restored["published"] and restored["validation"]["tombstones_returned"] == 0 and url in live_urls(store)
    assert live_urls(store) == set(editions[2].document_urls(site.base_url))

    site.set_edition(3)
    later = refresh(sources, store)
    assert "error" not in later, later
    assert later["published"] and live_urls(store) == set(editions[3].document_urls(site.base_url))
    with open_store(store).open() as view:
        assert view.count == open_store(store).manifest().stats.chunks
