"""A targeted ingest through a real pipeline run: only the named URLs and files are read.

Edition 0 of the sample world plus a folder of files is ingested in full; then the site moves to
edition 1, a file is edited and another removed, and a targeted run names some of the changed
pages, the removed news article, both files and URLs no source owns. A second sample server
stands for an internal service an event might try to reach. The same run, run directly (its
DoFns without a Beam runner, beam_jobs.direct), must write what the pipeline wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from beam_jobs.ingest import IngestResult, run_ingest
from beam_jobs.sample.server import SampleSiteServer
from beam_jobs.sample.world import SampleWorld
from beam_jobs.sources import SourcesConfig
from model.store import open_store
from tests.fixtures.site import FAST_FETCH

pytestmark = [pytest.mark.integration]

PROSE = "Plain prose about the harbour, the market and the weather, long enough to be a document. " * 3


@dataclass
class Targeted:
    world: SampleWorld
    base: str
    store_uri: str
    folder: Path
    named: list[str]
    removed: list[str]
    unnamed_changed: list[str]
    result: IngestResult
    requested: list[str]
    stranger_requests: int
    parent: str
    direct: IngestResult  # the same run through beam_jobs.direct, against the same parent
    direct_requested: list[str]


def changed_paths(world: SampleWorld) -> tuple[list[str], list[str]]:
    e0, e1 = world.edition(0), world.edition(1)
    changed = sorted(p for p in set(e0.document_paths()) & set(e1.document_paths()) if e0.pages[p].body != e1.pages[p].body)
    removed = sorted(set(e0.document_paths()) - set(e1.document_paths()))
    return changed, removed


@pytest.fixture(scope="module")
def targeted(tmp_path_factory) -> Targeted:
    world = SampleWorld(seed=3, size=1)
    root = tmp_path_factory.mktemp("targeted")
    folder = root / "files"
    folder.mkdir()
    (folder / "keep.md").write_text(f"# Keep\n\n{PROSE}")
    (folder / "edit.md").write_text(f"# Edit\n\nThe harbour master is Old Name. {PROSE}")
    (folder / "remove.md").write_text(f"# Remove\n\n{PROSE}")
    store_uri = str(root / "store")
    store = open_store(store_uri)
    with SampleSiteServer(world, 0) as site, SampleSiteServer(world, 0) as stranger:
        config = SourcesConfig.model_validate({
            "fetch": FAST_FETCH,
            "sources": [
                {"kind": "site", "name": "sample", "start_urls": [site.base_url + "/"], "allow_private": True},
                {"kind": "files", "name": "notes", "glob": str(folder / "*.md")},
            ],
        })
        full = run_ingest(config, store_uri)
        store.publish(full.version, expected_current=None)
        site.set_edition(1)
        (folder / "edit.md").write_text(f"# Edit\n\nThe harbour master is New Name. {PROSE}")
        (folder / "remove.md").unlink()
        changed, removed = changed_paths(world)
        half = max(1, len(changed) // 2)
        named = changed[:half] + removed
        urls = [site.base_url + p for p in named] + [str(folder / "edit.md"), str(folder / "remove.md")]
        urls += [stranger.base_url + "/", site.base_url.replace("127.0.0.1", "localhost") + "/", "/etc/passwd", str(folder / "../x.md")]
        site.clear_log()
        result = run_ingest(config, store_uri, urls=urls + urls[:2], direct=False)  # repeats count once
        requested = [r.path for r in site.requests]
        site.clear_log()
        direct = run_ingest(config, store_uri, urls=urls + urls[:2], direct=True)
        return Targeted(world, site.base_url, store_uri, folder, named, removed, changed[half:], result,
                        requested, len(stranger.requests), full.version, direct, [r.path for r in site.requests])


def ledger(t: Targeted, version: str) -> dict[str, dict]:
    return {row["url"]: row for row in open_store(t.store_uri).read_ledger(version).to_pylist()}


def test_only_the_named_pages_are_requested(targeted):
    assert sorted(set(targeted.requested) - {"/robots.txt"}) == sorted(targeted.named)
    assert len(targeted.requested) == len(targeted.named) + 1  # each once, plus robots.txt


def test_urls_outside_every_source_are_refused_and_never_fetched(targeted):
    assert targeted.stranger_requests == 0
    refused = [url for url, _ in targeted.result.refused]
    assert len(refused) == 4 and "/etc/passwd" in refused
    assert targeted.result.metrics["refused_urls"] == 4


def test_named_documents_change_and_the_rest_are_kept(targeted):
    m = targeted.result.metrics
    assert targeted.removed and targeted.unnamed_changed
    assert m["fetched"] == len(targeted.named) - len(targeted.removed) + 1  # named pages still there + edit.md
    assert m["deleted"] == len(targeted.removed) + 1  # the removed articles (404) and the removed file
    assert 2 <= m["changed"] <= len(targeted.named) - len(targeted.removed) + 1
    before, after = ledger(targeted, targeted.parent), ledger(targeted, targeted.result.version)
    for path in targeted.unnamed_changed:  # changed on the site, but nobody said so: kept as stored
        assert after[targeted.base + path]["content_hash"] == before[targeted.base + path]["content_hash"]
    assert str(targeted.folder / "keep.md") in after and str(targeted.folder / "remove.md") not in after
    assert after[str(targeted.folder / "edit.md")]["content_hash"] != before[str(targeted.folder / "edit.md")]["content_hash"]
    assert len(after) == len(before) - len(targeted.removed) - 1
    with open_store(targeted.store_uri).open(targeted.result.version) as view:
        texts = [row["text"] for batch in view.iter_chunks() for row in batch.to_pylist()]
    assert any("New Name" in text for text in texts) and not any("Old Name" in text for text in texts)


def test_a_targeted_run_naming_nothing_it_may_fetch_writes_nothing(targeted):
    from beam_jobs.sources import SourcesConfig as Config

    config = Config.model_validate({"sources": [{"kind": "site", "name": "sample", "start_urls": [targeted.base + "/"]}]})
    result = run_ingest(config, targeted.store_uri, urls=["http://10.0.0.1/", "not a url"])
    assert result.version is None and len(result.refused) == 2


def test_a_direct_run_writes_what_the_pipeline_writes(targeted):
    import numpy as np

    beam, direct = targeted.result, targeted.direct
    assert direct.version is not None and direct.version != beam.version and direct.parent == beam.parent
    assert sorted(targeted.direct_requested) == sorted(targeted.requested)
    counters = lambda result: {k: v for k, v in result.metrics.items() if not k.startswith("ms_")}  # noqa: E731 - times differ
    assert counters(direct) == counters(beam)
    assert (direct.chunks_added, direct.chunks_removed, direct.refused, direct.deferred) == (beam.chunks_added, beam.chunks_removed, beam.refused, beam.deferred)
    store = open_store(targeted.store_uri)
    ours, theirs = store.manifest(direct.version), store.manifest(beam.version)
    assert ours.tombstones == theirs.tombstones and ours.stats == theirs.stats and ours.parent == theirs.parent
    when = ("fetched_at", "first_seen")  # the moment of each run
    rows = lambda version: {u: {k: v for k, v in r.items() if k not in when} for u, r in ledger(targeted, version).items()}  # noqa: E731
    assert rows(direct.version) == rows(beam.version)

    def chunks(version):
        with store.open(version) as view:
            texts = {row["chunk_id"]: row["text"] for batch in view.iter_chunks() for row in batch.to_pylist()}
            ids, keys = view.sample_keys(view.count)
        return texts, dict(zip(ids.tolist(), keys))

    (our_texts, our_keys), (their_texts, their_keys) = chunks(direct.version), chunks(beam.version)
    assert our_texts == their_texts and set(our_keys) == set(their_keys)
    ids = sorted(our_keys)
    a, b = np.stack([our_keys[i] for i in ids]), np.stack([their_keys[i] for i in ids])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.99  # the same encoder on the same text; batches (and a quantised index's codes) may differ
