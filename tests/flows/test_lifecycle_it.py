"""The store's whole lifecycle, model-based: random changes to the sources, each followed by a
refresh, a compaction or a rollback, and after each the published version checked against a model.

Four files sources and the sample site share one store. A files source holds ``.txt`` files (one
document each) and one ``records.jsonl`` (one document a line); the site moves through editions
and takes pages down and puts them back up. A step changes every source once (files: add, edit,
edit back to an earlier text, delete, restore with the same content, rename, or rewrite a file
with its own content while the refresh reads it; site: next edition, page down, page back up),
then runs one operation through the flows the CLI and the deployments run (``refresh_corpus``,
``compact_index``, ``rollback_index``). After every operation:

- it completed: a refresh never fails for a reason the sources did not cause, and it refuses a
  source's deletions (``failed_sources``) exactly when that source would lose more than
  ``max_delete_share`` of its documents;
- CURRENT's ledger, its live chunks and its stats hold exactly the model's documents: every
  document's URL, content hash and chunk ids, its chunks at positions 0..n-1 whose texts put
  together are its text, and nothing else. The model is what the sources hold after a refresh,
  except a file rewritten during the refresh, whose documents stay as the last refresh saw them
  (a ``.jsonl`` file's whole source deletes nothing that run), and a source whose deletions the
  guard refused; what the version held after a compaction; the rolled-back version's after a
  rollback.

One operation serves five sources' steps: the refresh's Beam job is what costs. ``STEPS`` counts
source steps (200: 40 operations, about three CPU-minutes).

Replaying a failure: the failure message starts with the seed and lists every step taken, and the
test prints the seed first, whatever stops it. The seed alone decides the steps, so
``RETROFRESH_LIFECYCLE_SEED=<seed> RETROFRESH_LIFECYCLE_STEPS=<steps> pytest
tests/flows/test_lifecycle_it.py -k seeded`` runs the same sequence up to that step again. Other
seeds explore other sequences; ``RETROFRESH_LIFECYCLE_LONG=1`` adds three longer runs (600 steps
each, seeds 1 to 3), kept out of ``make test`` for the suite's time.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from model.contracts.ids import content_hash, doc_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("RETROFRESH_LIFECYCLE_SEED", "20"))
STEPS = int(os.environ.get("RETROFRESH_LIFECYCLE_STEPS", "200"))  # source steps: SOURCES per operation
LONG_SEEDS = (1, 2, 3)  # the long runs' other sequences
LONG_STEPS = 600
SOURCES = 4  # files sources
MAX_DELETE_SHARE = 0.5  # a refresh keeps a source's documents when it would delete more of them
# Loopback is fast, but this machine may be shared: generous limits, so no page fails for being slow.
SITE_FETCH = {"crawl_delay_s": 0, "timeout_s": 30, "deadline_s": 120, "retries": 2, "backoff_s": 0.05, "max_backoff_s": 0.2}

WORDS = (
    "harbour market weather bridge river council library station garden ferry tower museum bakery "
    "lantern orchard quarry meadow canal festival archive beacon cobble granary mill pier spire tide "
    "vineyard willow amber cedar copper ember flint hazel ivory jasper linen marble ochre pewter"
).split()


def make_text(rng: random.Random) -> str:
    """One normalised line of 6 to 120 words: one to three chunks, already as extraction leaves it."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 120))) + f" {rng.getrandbits(32):08x}."


@dataclass
class FilesSourceModel:
    """What one files source holds now, and what it held (for restores and edits back)."""

    name: str
    folder: Path
    files: dict[str, str] = field(default_factory=dict)  # .txt file name -> text
    records: dict[str, str] = field(default_factory=dict)  # record id -> text, in file order
    gone_files: dict[str, str] = field(default_factory=dict)  # deleted or renamed away: name -> text
    gone_records: dict[str, str] = field(default_factory=dict)
    history: dict[str, list[str]] = field(default_factory=dict)  # document key -> texts it had
    serial: int = 0

    @property
    def jsonl(self) -> Path:
        return self.folder / "records.jsonl"

    def fresh(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def documents(self) -> dict[str, tuple[str, str]]:
        """doc_id -> (url, text), as the ingest names them."""
        docs = {doc_id(str(self.folder / n)): (str(self.folder / n), t) for n, t in self.files.items()}
        for ident, text in self.records.items():
            docs[doc_id(f"{self.name}:{ident}")] = (f"{self.jsonl}#{ident}", text)
        return docs

    def all_documents(self) -> set[str]:
        """Every doc id this source ever had."""
        return ({doc_id(str(self.folder / n)) for n in [*self.files, *self.gone_files]}
                | {doc_id(f"{self.name}:{i}") for i in [*self.records, *self.gone_records]})

    def file_documents(self, file: str) -> set[str]:
        """The doc ids a file speaks for: a .txt file's own; every record id the .jsonl had or has."""
        if file == self.jsonl.name:
            return {doc_id(f"{self.name}:{i}") for i in [*self.records, *self.gone_records]}
        return {doc_id(str(self.folder / file))}

    def write_file(self, name: str) -> None:
        (self.folder / name).write_text(self.files[name])

    def write_jsonl(self) -> None:
        self.jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in self.records.items()))

    def put(self, what: str, key: str, text: str) -> None:
        """Give a file ("file") or a .jsonl record ("record") this text, on disk too."""
        if what == "file":
            self.files[key] = text
            self.write_file(key)
        else:
            self.records[key] = text
            self.write_jsonl()

    def remember(self, key: str, text: str) -> None:
        self.history.setdefault(key, []).append(text)

    # one step: a change of one kind, or "rewrite" (returns the file to rewrite during the refresh)

    def step(self, rng: random.Random) -> tuple[str, str | None]:
        kinds = ["add", "add_record", "edit", "edit", "edit_back", "delete", "delete_record", "rename", "rewrite"]
        if self.gone_files or self.gone_records:
            kinds += ["restore", "restore"]
        while True:
            kind = rng.choice(kinds)
            done = getattr(self, f"_{kind}")(rng)
            if done is not None:
                return done

    def _add(self, rng):
        name = self.fresh("doc") + ".txt"
        self.files[name] = make_text(rng)
        self.remember(name, self.files[name])
        self.write_file(name)
        return f"{self.name}: add {name}", None

    def _add_record(self, rng):
        ident = self.fresh("r")
        self.records[ident] = make_text(rng)
        self.remember(ident, self.records[ident])
        self.write_jsonl()
        return f"{self.name}: add record {ident}", None

    def _edit(self, rng):
        keys = [("file", n) for n in self.files] + [("record", i) for i in self.records]
        if not keys:
            return None
        what, key = rng.choice(keys)
        text = make_text(rng)
        self.remember(key, text)
        self.put(what, key, text)
        return f"{self.name}: edit {what} {key}", None

    def _edit_back(self, rng):
        """Back to a text the document had before (its old chunk ids were tombstoned since)."""
        keys = [("file", n) for n in self.files if len(set(self.history[n])) > 1]
        keys += [("record", i) for i in self.records if len(set(self.history[i])) > 1]
        if not keys:
            return None
        what, key = rng.choice(keys)
        current = self.files[key] if what == "file" else self.records[key]
        text = rng.choice([t for t in self.history[key] if t != current])
        self.remember(key, text)
        self.put(what, key, text)
        return f"{self.name}: edit {what} {key} back to an earlier text", None

    def _delete(self, rng):
        if not self.files:
            return None
        name = rng.choice(sorted(self.files))
        self.gone_files[name] = self.files.pop(name)
        (self.folder / name).unlink()
        return f"{self.name}: delete {name}", None

    def _delete_record(self, rng):
        if not self.records:
            return None
        ident = rng.choice(sorted(self.records))
        self.gone_records[ident] = self.records.pop(ident)
        self.write_jsonl()
        return f"{self.name}: delete record {ident}", None

    def _restore(self, rng):
        keys = [("file", n) for n in self.gone_files] + [("record", i) for i in self.gone_records]
        if not keys:
            return None
        what, key = rng.choice(sorted(keys))
        self.put(what, key, (self.gone_files if what == "file" else self.gone_records).pop(key))
        return f"{self.name}: restore {what} {key} with the same content", None

    def _rename(self, rng):
        if not self.files:
            return None
        old = rng.choice(sorted(self.files))
        new = self.fresh("moved") + ".txt"
        self.files[new] = self.files.pop(old)
        self.gone_files[old] = self.files[new]
        self.remember(new, self.files[new])
        (self.folder / old).rename(self.folder / new)
        return f"{self.name}: rename {old} -> {new}", None

    def _rewrite(self, rng):
        names = sorted(self.files) + ([self.jsonl.name] if self.jsonl.exists() else [])
        if not names:
            return None
        name = rng.choice(names)
        return f"{self.name}: rewrite {name} (same content) while the refresh reads it", name


class SiteModel:
    """The sample site as one more source: it moves through editions, and takes pages down and back up.

    Its documents are the pages the served edition holds (200 HTML that robots.txt allows), their
    text as extraction leaves it; a page taken down answers 404 and leaves the sitemap, and comes
    back with the same content.
    """

    name = "site"
    LAST_EDITION = 3

    def __init__(self):
        from beam_jobs.sample.server import SampleSiteServer
        from beam_jobs.sample.world import SampleWorld

        self.server = SampleSiteServer(SampleWorld(0, 1), 0).start()
        self.edition, self.removed = 0, set()
        self._texts: dict[bytes, str] = {}
        self.seen: set[str] = set()

    def all_documents(self) -> set[str]:
        """Every doc id the site served while the test looked."""
        return self.seen

    def close(self) -> None:
        self.server.stop()

    def config(self) -> dict:
        return {"kind": "site", "name": self.name, "start_urls": [self.server.base_url + "/"], "allow_networks": ["127.0.0.0/8"]}

    def step(self, rng: random.Random) -> tuple[str, None]:
        pages = [p for p in self.server.world.edition(self.edition).document_paths() if p != "/" and p not in self.removed]
        kinds = ["remove"] * bool(pages) + ["restore"] * bool(self.removed) + ["next"] * (self.edition < self.LAST_EDITION)
        kind = rng.choice(kinds) if kinds else "none"
        if kind == "remove":
            path = rng.choice(pages)
            self.removed.add(path)
            what = f"take {path} down"
        elif kind == "restore":
            path = rng.choice(sorted(self.removed))
            self.removed.discard(path)
            what = f"put {path} back up (same content)"
        elif kind == "next":
            self.edition += 1
            what = f"publish edition {self.edition}"
        else:
            what = "nothing"
        self.server.set_edition(self.edition, without=self.removed)
        return f"{self.name}: {what}", None

    def documents(self) -> dict[str, tuple[str, str]]:
        from beam_jobs.extract import document_text, extract_html
        from model.contracts.ids import canonical_url

        docs = {}
        edition = self.server.edition
        for path in edition.document_paths():
            url = canonical_url(self.server.base_url + path)
            body = edition.pages[path].body
            if body not in self._texts:
                self._texts[body] = document_text(extract_html(body, "utf-8", url))
            docs[doc_id(url)] = (url, self._texts[body])
        self.seen |= set(docs)
        return docs


def published(store_uri: str) -> dict[str, tuple[str, str, list[str]]]:
    """CURRENT as documents: doc_id -> (url, content hash, chunk texts by position), checked for consistency."""
    from model.store import open_store

    store = open_store(store_uri)
    version = store.current()
    manifest = store.manifest(version)
    ledger = store.read_ledger(version).to_pylist()
    chunks: dict[str, dict[int, tuple[int, str, str]]] = {}
    live = 0
    with store.open(version) as view:
        for batch in view.iter_chunks():
            for row in batch.to_pylist():
                live += 1
                positions = chunks.setdefault(row["doc_id"], {})
                assert row["position"] not in positions, f"{version}: two live chunks at {row['doc_id']}:{row['position']}"
                positions[row["position"]] = (row["chunk_id"], row["text"], row["url"])
    assert manifest.stats.chunks == live, f"{version}: stats say {manifest.stats.chunks} chunks, {live} are live"
    assert manifest.stats.documents == len(ledger), f"{version}: stats say {manifest.stats.documents} documents, the ledger has {len(ledger)}"
    assert set(chunks) == {row["doc_id"] for row in ledger}, (
        f"{version}: live chunks of documents the ledger lacks {sorted(set(chunks) - {r['doc_id'] for r in ledger})[:5]}, "
        f"ledger documents without live chunks {sorted({r['doc_id'] for r in ledger} - set(chunks))[:5]}"
    )
    out = {}
    for row in ledger:
        mine = chunks[row["doc_id"]]
        assert sorted(mine) == list(range(len(mine))), f"{version}: {row['url']} has chunks at positions {sorted(mine)}"
        assert [mine[p][0] for p in sorted(mine)] == list(row["chunk_ids"]), f"{version}: {row['url']}'s live chunks are not its ledger's"
        assert {mine[p][2] for p in mine} == {row["url"]}, f"{version}: {row['url']}'s chunks cite {sorted({mine[p][2] for p in mine})}"
        out[row["doc_id"]] = (row["url"], row["content_hash"], [mine[p][1] for p in sorted(mine)])
    return out


def check(store_uri: str, expected: dict[str, tuple[str, str]]) -> None:
    """CURRENT holds exactly ``expected`` (doc_id -> (url, text)), chunk texts included."""
    actual = published(store_uri)
    missing = sorted(expected[d][0] for d in set(expected) - set(actual))
    extra = sorted(actual[d][0] for d in set(actual) - set(expected))
    assert not missing and not extra, f"published documents differ: missing {missing}, not in the sources {extra}"
    for key, (url, text) in expected.items():
        got_url, got_hash, texts = actual[key]
        assert got_url == url, f"{key}: published under {got_url}, the source has it at {url}"
        assert got_hash == content_hash(text), f"{url}: the published content is not the source's"
        assert "".join(texts) == text, f"{url}: its live chunks do not spell its text"


class RewriteWhileReading:
    """Rewrites named files, each with its own content, while the refresh reads them.

    The ingest reads a listed file through ``beam_jobs.filestat.read_bytes``, between two stats
    of it; this writer truncates the file in place just before that read (so the read sees the
    writer's empty file) and writes the same bytes again before the read returns, a second later.
    """

    def __init__(self, monkeypatch):
        import beam_jobs.filestat

        self.paths: set[str] = set()
        read = beam_jobs.filestat.read_bytes

        def read_during_rewrite(path: str, limit: int) -> bytes:
            if path not in self.paths:
                return read(path, limit)
            self.paths.discard(path)
            file = Path(path)
            content, stat = file.read_bytes(), file.stat()
            with open(file, "r+b") as f:  # the writer truncates in place (same inode) ...
                f.truncate(0)
            body = read(path, limit)
            file.write_bytes(content)  # ... and writes the same bytes again
            os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
            return body

        monkeypatch.setattr(beam_jobs.filestat, "read_bytes", read_during_rewrite)


class Lifecycle:
    """The model, the store, and the steps taken (for the failure message)."""

    def __init__(self, root: Path, seed: int, rewriter: RewriteWhileReading, site: SiteModel):
        self.seed, self.rng, self.rewriter = seed, random.Random(seed), rewriter
        self.store = str(root / "store")
        self.files = [FilesSourceModel(f"files{k}", root / f"files{k}") for k in range(SOURCES)]
        for source in self.files:
            source.folder.mkdir()
        self.sources = [*self.files, site]
        self.sources_file = root / "sources.yaml"
        self.sources_file.write_text(yaml.safe_dump({
            "fetch": SITE_FETCH,
            "max_delete_share": MAX_DELETE_SHARE,
            "sources": [*({"kind": "files", "name": s.name, "glob": f"{s.folder}/*"} for s in self.files), site.config()],
        }))
        self.expected: dict[str, tuple[str, str]] = {}  # what CURRENT must hold
        self.kept: dict[str, dict[str, tuple[str, str]]] = {}  # version -> what it holds
        self.log: list[str] = []
        self.steps = 0
        self.seconds: dict[str, float] = {}
        self.operations: dict[str, int] = {}

    def source_documents(self) -> dict[str, tuple[str, str]]:
        docs: dict[str, tuple[str, str]] = {}
        for source in self.sources:
            docs |= source.documents()
        return docs

    def fail(self, why: str) -> None:
        steps = "\n".join(f"  {line}" for line in self.log)
        pytest.fail(f"seed {self.seed}: {why}\nsteps:\n{steps}\nreplay: RETROFRESH_LIFECYCLE_SEED={self.seed} "
                    f"RETROFRESH_LIFECYCLE_STEPS={self.steps} (see the module docstring)", pytrace=False)

    def step(self, number: int) -> None:
        self.steps = (number + 1) * len(self.sources)
        rewrites = []
        for source in self.sources:
            what, rewrite = source.step(self.rng)
            self.log.append(f"{number}: {what}")
            if rewrite is not None:
                rewrites.append((source, rewrite))
        operation = "refresh" if rewrites or number == 0 else self.rng.choice(["refresh", "refresh", "compact", "rollback"])
        if operation == "rollback" and len(self.kept) < 2:
            operation = "refresh"
        started = time.monotonic()
        getattr(self, operation)(rewrites)
        self.seconds[operation] = self.seconds.get(operation, 0.0) + time.monotonic() - started
        print(f"step {number}: {operation} in {time.monotonic() - started:.1f} s", flush=True)
        self.operations[operation] = self.operations.get(operation, 0) + 1
        try:
            check(self.store, self.expected)
            return
        except AssertionError as error:
            why = f"after step {number} ({self.log[-1].strip()}): {error}"
        self.fail(why)

    def refresh(self, rewrites) -> None:
        from flows.refresh import refresh_corpus

        before = self.expected
        for source, name in rewrites:
            self.rewriter.paths.add(str(source.folder / name))
        self.log.append("  -> refresh")
        state = refresh_corpus(sources=str(self.sources_file), store=self.store, return_state=True)
        self.rewriter.paths.clear()
        if not state.is_completed():
            self.fail(f"the refresh failed: {state.message}")
        summary = state.result()
        expected = self.source_documents()
        for source, name in rewrites:
            # A file changed while read is skipped: its documents stay as the last refresh saw them.
            # An unread .jsonl file may hold any of its source's documents, so that source deletes
            # nothing this run (beam_jobs/crawl.py, ReadFileDoFn).
            skipped = source.file_documents(name)
            if name == source.jsonl.name:
                skipped |= {key for key in source.all_documents() if key in before and key not in expected}
            for key in skipped:
                expected.pop(key, None)
                if key in before:
                    expected[key] = before[key]
        refused = set()
        for source in self.sources:  # the deletion guard (flows/tasks/deletions.py)
            had = source.all_documents() & set(before)
            gone = had - set(expected)
            if len(gone) > MAX_DELETE_SHARE * len(had):
                refused.add(source.name)
                expected |= {key: before[key] for key in gone}
        reported = {failure["source"] for failure in summary.get("failed_sources", [])}
        if reported != refused:
            self.fail(f"the refresh refused the deletions of {sorted(reported)}, the model of {sorted(refused)}")
        if refused:
            self.log.append(f"     (deletions refused for {', '.join(sorted(refused))}: over max_delete_share)")
        self.published(expected)

    def compact(self, _rewrites) -> None:
        from flows.compact import compact_index

        self.log.append("  -> compact")
        state = compact_index(store=self.store, min_shards=2, return_state=True)
        if not state.is_completed():
            self.fail(f"the compaction failed: {state.message}")
        self.published(dict(self.expected))

    def rollback(self, _rewrites) -> None:
        from flows.rollback import rollback_index
        from model.store import open_store

        current = open_store(self.store).current()
        version = self.rng.choice(sorted(v for v in self.kept if v != current))
        self.log.append(f"  -> rollback to {version}")
        state = rollback_index(version, store=self.store, return_state=True)
        if not state.is_completed():
            self.fail(f"the rollback to {version} failed: {state.message}")
        self.published(dict(self.kept[version]))

    def published(self, expected: dict[str, tuple[str, str]]) -> None:
        from model.store import open_store

        self.expected = expected
        self.kept[open_store(self.store).current()] = expected


def run_lifecycle(root: Path, seed: int, steps: int, monkeypatch) -> Lifecycle:
    site = SiteModel()
    lifecycle = Lifecycle(root, seed, RewriteWhileReading(monkeypatch), site)
    print(f"lifecycle seed {seed}, {steps} source steps")  # shown by pytest whatever stops the run
    started = time.monotonic()
    try:
        for number in range(-(-steps // len(lifecycle.sources))):
            lifecycle.step(number)
    finally:
        site.close()
    print(f"seed {seed}: {lifecycle.steps} source steps, "
          f"{lifecycle.operations} in {time.monotonic() - started:.1f} s "
          f"({ {k: round(v, 1) for k, v in lifecycle.seconds.items()} } s)")
    return lifecycle


@pytest.mark.timeout(1800)  # minutes alone; far longer on a machine shared with other test runs
def test_seeded_lifecycle_publishes_what_the_sources_hold(prefect_api, tmp_path, monkeypatch):
    run_lifecycle(tmp_path, SEED, STEPS, monkeypatch)


@pytest.mark.skipif(not os.environ.get("RETROFRESH_LIFECYCLE_LONG"), reason="set RETROFRESH_LIFECYCLE_LONG=1 for the long run")
@pytest.mark.parametrize("seed", LONG_SEEDS)
@pytest.mark.timeout(3600)
def test_long_lifecycle(prefect_api, tmp_path, monkeypatch, seed):
    run_lifecycle(tmp_path, seed, LONG_STEPS, monkeypatch)
