"""The watch on signals that do not behave: a malformed sitemap entry."""

from __future__ import annotations

import pytest
import yaml

from beam_jobs.sources import load_sources
from flows.watch import Watcher
from tests.fixtures.site import FAST_FETCH
from tests.fixtures.static_site import StaticSite, sitemap

pytestmark = pytest.mark.integration


def write_sources(path, base_url: str, **site) -> str:
    sources = [{"kind": "site", "name": "site", "start_urls": [base_url + "/"], "allow_networks": ["127.0.0.0/8"], **site}]
    path.write_text(yaml.safe_dump({"fetch": FAST_FETCH, "sources": sources}))
    return str(path)


def test_a_malformed_sitemap_entry_costs_only_itself(tmp_path):
    pages = {"/sitemap.xml": sitemap([("/a.html", None), ("http://[::1", None), ("/b.html", None)])}
    with StaticSite(pages) as site:
        watcher = Watcher(load_sources(write_sources(tmp_path / "sources.yaml", site.base_url)), str(tmp_path / "store"), announce=lambda a: None)
        try:
            (found,) = watcher.poll()
        finally:
            watcher.close()
    assert found.urls == (site.base_url + "/a.html", site.base_url + "/b.html")
    assert watcher.state["site"].failures == 0
