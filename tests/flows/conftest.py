"""Fixtures of the flow tests: one sample site and one two-version store, built once per session.

Building the store *is* the refresh flow's main end-to-end run (edition 0, then edition 1);
test_refresh_it.py checks it, other tests work on copies of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.flows.support import ReloadServer, flow_run_id, write_sources


@dataclass
class Refreshed:
    """A local store after refreshing edition 0, then edition 1, of the sample world."""

    store: Path
    sources: Path
    site: object  # SampleSiteServer (its edition is left at 1)
    states: list  # the two flow-run final states


@pytest.fixture(scope="session")
def flow_site():
    """A sample site for the flow tests; a test sets the edition it needs (tests run one at a time)."""
    from beam_jobs.sample.server import SampleSiteServer
    from beam_jobs.sample.world import SampleWorld

    site = SampleSiteServer(SampleWorld(0, 1), 0).start()
    yield site
    site.stop()


@pytest.fixture(scope="session")
def refreshed(prefect_api, flow_site, tmp_path_factory) -> Refreshed:
    """Run ``refresh_corpus`` on edition 0, then edition 1, into a fresh local store."""
    from flows.refresh import refresh_corpus

    root = tmp_path_factory.mktemp("refreshed")
    sources = write_sources(root / "sources.yaml", flow_site.base_url)
    store = root / "store"
    states = []
    for edition in (0, 1):
        flow_site.set_edition(edition)
        states.append(refresh_corpus(sources=str(sources), store=str(store), return_state=True))
    assert all(s.is_completed() for s in states), [s.message for s in states]
    assert all(flow_run_id(s) for s in states)
    return Refreshed(store, sources, flow_site, states)


@pytest.fixture
def reload_server():
    """Factory of fake RETRO servers answering POST /admin/reload; all stopped after the test."""
    servers = []

    def make(**kwargs) -> ReloadServer:
        servers.append(ReloadServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
