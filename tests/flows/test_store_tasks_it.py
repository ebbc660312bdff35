"""Publishing through the flow's task: exactly once on retries, never over a version it was not built on."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.tasks.store import publish_version
from model.store import PublishConflict, open_store
from tests.flows.support import copy_store

pytestmark = pytest.mark.integration


def test_a_retried_publish_that_already_landed_succeeds_without_publishing_again(prefect_api, refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, second = (s.result()["version"] for s in refreshed.states)

    @flow
    def retry_publish():
        return publish_version(store, second, first)  # as if the first attempt's answer was lost

    assert retry_publish()
    assert open_store(store).current() == second


def test_a_version_built_on_another_parent_is_refused(prefect_api, refreshed, tmp_path):
    store = copy_store(refreshed.store, tmp_path / "store")
    first, second = (s.result()["version"] for s in refreshed.states)

    @flow
    def publish_stale():
        return publish_version(store, first, second)  # v1 was built on nothing, CURRENT is v2

    state = publish_stale(return_state=True)
    assert state.is_failed() and f"{first} was built on None, not on {second}" in state.message
    with pytest.raises(PublishConflict):
        state.result()
    assert open_store(store).current() == second
