"""``refresh_changed`` against the Prefect test API: only the named URLs, coalesced, one at a time,
nothing lost to a crash.

Each test works on a copy of the session's two-version store (editions 0 and 1) and moves the
sample site to edition 2, whose changes it names.
"""

from __future__ import annotations

import threading
import time

import pytest

from flows.common.lease import RefreshLease
from flows.common.pending import PendingChanges
from model.store import open_store
from tests.flows.support import copy_store

pytestmark = pytest.mark.integration


def edition_2_urls(site) -> list[str]:
    """Pages whose content differs between editions 1 and 2, and pages edition 2 removed."""
    e1, e2 = site.world.edition(1), site.world.edition(2)
    changed = [p for p in e2.document_paths() if p not in e1.pages or e1.pages[p].body != e2.pages[p].body]
    removed = sorted(set(e1.document_paths()) - set(e2.document_paths()))
    return [site.base_url + p for p in changed + removed]


@pytest.fixture
def edition_2(refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    refreshed.site.set_edition(2)
    yield store, edition_2_urls(refreshed.site)
    refreshed.site.set_edition(1)


def ledger_hashes(store: str, version: str) -> dict[str, str]:
    return {row["url"]: row["content_hash"] for row in open_store(store).read_ledger(version).to_pylist()}


def test_a_targeted_refresh_fetches_and_publishes_only_the_named_urls(refreshed, edition_2):
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    before = open_store(store).current()
    refreshed.site.clear_log()
    result = refresh_changed(urls=urls + ["http://169.254.169.254/latest/meta-data/"], sources=str(refreshed.sources), store=store)
    (only,) = result["passes"]
    assert only["published"] and only["parent"] == before and open_store(store).current() == only["version"]
    requested = {r.path for r in refreshed.site.requests} - {"/robots.txt"}
    assert requested == {u.removeprefix(refreshed.site.base_url) for u in urls}
    assert [url for url, _ in result["refused"]] == ["http://169.254.169.254/latest/meta-data/"]
    old, new = ledger_hashes(store, before), ledger_hashes(store, only["version"])
    assert {u for u in new if new[u] != old.get(u)} <= set(urls) and any(new.get(u) != old.get(u) for u in urls)
    assert PendingChanges(open_store(store).backend).entries() == []


def test_duplicate_events_give_one_refresh(refreshed, edition_2):
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    pending = PendingChanges(open_store(store).backend)
    for _ in range(3):  # three events' runs recorded the same change before the first took the lease
        pending.add(urls, origin="test")
    result = refresh_changed(urls=urls, sources=str(refreshed.sources), store=store)
    assert len(result["passes"]) == 1 and result["passes"][0]["published"]
    assert pending.entries() == []
    versions = open_store(store).versions()
    again = refresh_changed(urls=None, sources=str(refreshed.sources), store=store)  # a late run of the burst
    assert again["passes"] == [] and open_store(store).versions() == versions


def test_a_crash_leaves_current_intact_and_the_change_is_picked_up_again(refreshed, edition_2, tmp_path):
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    before = open_store(store).current()
    state = refresh_changed(urls=urls, sources=str(refreshed.sources), store=store, embedder_path=str(tmp_path / "no-such-encoder"),
                            return_state=True)
    assert state.is_failed()
    assert open_store(store).current() == before
    assert [e.urls for e in PendingChanges(open_store(store).backend).entries()] == [tuple(urls)]
    result = refresh_changed(sources=str(refreshed.sources), store=store)  # the next run, named nothing itself
    assert result["passes"][0]["published"] and open_store(store).current() != before
    assert PendingChanges(open_store(store).backend).entries() == []


def test_a_refresh_waits_for_the_lease_and_a_change_arriving_meanwhile_is_not_lost(refreshed, edition_2):
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    backend = open_store(store).backend
    other = RefreshLease(backend, holder="a full refresh in progress")
    other.acquire()
    late = [refreshed.site.base_url + "/"]

    def finish_the_other_refresh():
        time.sleep(1.5)
        PendingChanges(backend).add(late, origin="an event during the other refresh")
        other.release()

    releaser = threading.Thread(target=finish_the_other_refresh)
    releaser.start()
    started = time.monotonic()
    result = refresh_changed(urls=urls, sources=str(refreshed.sources), store=store, lease_wait_s=60)
    releaser.join()
    assert time.monotonic() - started >= 1.5  # it waited instead of failing
    assert sum(p["urls"] for p in result["passes"]) >= len(set(urls) | set(late)) - 1
    assert PendingChanges(backend).entries() == []
    assert open_store(store).current() == result["passes"][-1]["version"]


def test_a_lease_that_stays_held_fails_the_run_and_keeps_its_urls(refreshed, edition_2):
    from flows.common.lease import LeaseHeld
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    backend = open_store(store).backend
    with RefreshLease(backend, holder="a long refresh"):
        state = refresh_changed(urls=urls, sources=str(refreshed.sources), store=store, lease_wait_s=0.5, return_state=True)
    assert state.is_failed()
    with pytest.raises(LeaseHeld):
        state.result()
    assert [e.urls for e in PendingChanges(backend).entries()] == [tuple(urls)]


def test_a_huge_batch_is_refreshed_in_bounded_passes(refreshed, edition_2):
    from flows.refresh_changed import refresh_changed

    store, urls = edition_2
    assert len(urls) >= 5
    result = refresh_changed(urls=urls, sources=str(refreshed.sources), store=store, max_urls=2)
    assert [p["urls"] for p in result["passes"]] == [2] * (len(urls) // 2) + ([len(urls) % 2] if len(urls) % 2 else [])
    assert PendingChanges(open_store(store).backend).entries() == []
    assert open_store(store).current() == [p for p in result["passes"] if p["published"]][-1]["version"]
