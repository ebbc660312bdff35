"""The refresh on a Dask cluster: a scheduler and two worker processes on loopback, against the in-process run.

The reference is the session's in-process refresh (``refreshed``: FnApiRunner, editions 0 then 1
of the sample world). The same two refreshes go through ``runner="dask"`` into a second store;
each published version must hold the same documents, the same chunk ids and the same vectors
(within the encoder's kernel tolerance), and the incremental refresh must diff as the in-process
one did.
"""

from __future__ import annotations

import numpy as np
import pytest

from flows.refresh import refresh_corpus
from model.store import open_store
from tests.fixtures.dask import dask_cluster  # noqa: F401 - fixture
from tests.fixtures.numerics import assert_close

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DIFF_KEYS = ("new", "changed", "unchanged", "deleted", "robots_blocked", "failed")


@pytest.fixture(scope="module")
def dask_refreshed(refreshed, dask_cluster, tmp_path_factory):  # noqa: F811
    """Editions 0 and 1 refreshed through the Dask cluster into a new store: (store, [summary 0, summary 1])."""
    store = tmp_path_factory.mktemp("dask-store") / "store"
    site = refreshed.site
    summaries = []
    try:
        for edition in (0, 1):
            site.set_edition(edition)
            state = refresh_corpus(sources=str(refreshed.sources), store=str(store), runner="dask",
                                   pipeline_args=[f"--dask_client_address={dask_cluster}"], return_state=True)  # fmt: skip
            assert state.is_completed(), state.message
            summaries.append(state.result())
    finally:
        site.set_edition(1)  # as the session fixture left it
    return store, summaries


def contents(store, version: str) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """(ledger url -> chunk ids, chunk id -> (doc id, text), chunk ids, their keys) of a version."""
    s = open_store(str(store))
    ledger = {row["url"]: tuple(row["chunk_ids"]) for row in s.read_ledger(version).to_pylist()}
    with s.open(version) as view:
        chunks = {row["chunk_id"]: (row["doc_id"], row["text"]) for batch in view.iter_chunks() for row in batch.to_pylist()}
        ids, keys = view.sample_keys(view.count)
    order = np.argsort(ids)
    return ledger, chunks, ids[order], keys[order]


def test_dask_refreshes_publish_what_the_in_process_ones_do(refreshed, dask_refreshed):
    store, summaries = dask_refreshed
    for reference, summary in zip((s.result() for s in refreshed.states), summaries):
        assert summary["published"]
        want_ledger, want_chunks, want_ids, want_keys = contents(refreshed.store, reference["version"])
        ledger, chunks, ids, keys = contents(store, summary["version"])
        assert ledger == want_ledger  # the same documents, chunked into the same chunk ids
        assert chunks == want_chunks
        assert np.array_equal(ids, want_ids)
        assert_close(keys, want_keys, msg="keys embedded on the Dask workers")


def test_the_incremental_dask_refresh_diffs_as_the_in_process_one(refreshed, dask_refreshed):
    _, summaries = dask_refreshed
    reference = refreshed.states[1].result()
    second = summaries[1]
    assert second["parent"] == summaries[0]["version"]
    assert {k: second["documents"][k] for k in DIFF_KEYS} == {k: reference["documents"][k] for k in DIFF_KEYS}
    assert (second["chunks_added"], second["chunks_removed"]) == (reference["chunks_added"], reference["chunks_removed"]) != (0, 0)
