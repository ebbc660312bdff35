"""README.md and docs/ARCHITECTURE.md name only files that exist: a moved or renamed module fails here
until the docs follow it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "docs" / "ARCHITECTURE.md"]
TOPS = ("flows", "beam_jobs", "model", "infra", "tests", "bench", "docs", ".ci")
# A path from the repository's root (`model/store/layout.py`, `flows/common/`); `<store>/...`,
# globs and placeholders are not paths of the repository.
ROOTED = re.compile(r"(?<![\w./<-])((?:" + "|".join(re.escape(t) for t in TOPS) + r")/[\w./-]*[\w/])")
# A module named on its own within its section (`layout.py` in the store's section).
BARE = re.compile(r"`(\w+\.py)`")
LINK = re.compile(r"\]\(([^)#\s]+)")


def named_paths(doc: Path) -> tuple[set[str], set[str], set[str]]:
    """The rooted paths, bare module file names and relative link targets a document names."""
    text = doc.read_text()
    rooted = {m.group(1).rstrip(".") for m in ROOTED.finditer(text)}
    links = {t for t in LINK.findall(text) if not re.match(r"\w+:", t)}
    return {p for p in rooted if not any(c in p for c in "<>*{}")}, set(BARE.findall(text)), links


def missing(doc: Path, root: Path = REPO) -> list[str]:
    rooted, bare, links = named_paths(doc)
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    names = {Path(f).name for f in tracked}
    return sorted(
        [p for p in rooted if not (root / p).exists()]
        + [f"{b} (no file of that name)" for b in bare if b not in names]
        + [f"link {t}" for t in links if not (doc.parent / t).exists()]
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_path_the_doc_names_exists(doc):
    assert missing(doc) == []


def test_a_moved_module_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("`model/store/layout.py` and `model/gone.py`, `layout.py` and `nowhere.py`, [d](../NOPE.md)\n")
    assert missing(doc) == ["link ../NOPE.md", "model/gone.py", "nowhere.py (no file of that name)"]
