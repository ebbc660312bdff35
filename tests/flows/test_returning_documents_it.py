"""Documents that leave a source and come back, end to end through ``retrofresh refresh``.

Chunk ids hash (document, position, content), so a document restored with the same content gets
back the ids its deletion tombstoned; every later refresh must still publish.
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = "alpha beta gamma delta river stone cloud market engine garden harbour lantern meadow orbit".split()


def text(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(words)) + "\n"


def refresh(sources: Path, store: Path) -> dict:
    """``retrofresh refresh --json``; the summary (exit 0), or the failure's JSON (exit 1)."""
    result = CliRunner().invoke(cli, ["refresh", "--sources", str(sources), "--store", str(store), "--json"])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == (1 if "error" in out else 0), result.output
    return out


def live_urls(store: Path) -> set[str]:
    opened = open_store(store)
    return set(opened.read_ledger(opened.current()).column("url").to_pylist())


def test_a_file_moved_away_and_back_is_published_again_and_later_refreshes_publish(prefect_api, tmp_path):
    docs, away = tmp_path / "docs", tmp_path / "away"
    docs.mkdir(), away.mkdir()
    for n in range(3):
        (docs / f"d{n}.txt").write_text(text(n))
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": [{"kind": "files", "name": "notes", "glob": str(docs / "*.txt")}]}))
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
