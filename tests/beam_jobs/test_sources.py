"""The sources file: the documented shape parses; every error names its field and line."""

from __future__ import annotations

import pytest

from beam_jobs.sources import FeedSource, FilesSource, SiteSource, SourcesError, load_sources

DOCUMENTED = """\
sources:
  - kind: site
    name: sample
    start_urls: ["http://127.0.0.1:8000/"]
    allow_private: false   # true permits loopback/private addresses (tests, intranets)
    max_pages: 1000
  - kind: feed
    name: news
    url: "https://example.org/feed.xml"
  - kind: files
    name: archive
    glob: "gs://bucket/docs/*.jsonl"
"""


def write(tmp_path, text: str):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_the_documented_shape_parses_with_defaults(tmp_path):
    config = load_sources(write(tmp_path, DOCUMENTED))
    site, feed, files = config.sources
    assert isinstance(site, SiteSource) and isinstance(feed, FeedSource) and isinstance(files, FilesSource)
    assert site.hosts == {"127.0.0.1"} and site.max_pages == 1000 and site.allow_private is False
    assert config.names == ["sample", "news", "archive"] and config.fetch.crawl_delay_s == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        (DOCUMENTED.replace("max_pages: 1000", "max_pages: many"), "sources.yaml:6: sources[0].max_pages: Input should be a valid integer"),
        (DOCUMENTED.replace('    url: "https://example.org/feed.xml"\n', ""), "sources.yaml:7: sources[1].url: Field required"),
        (DOCUMENTED.replace("kind: files", "kind: folder"), "sources.yaml:10: sources[2]: Input tag 'folder'"),
        (DOCUMENTED.replace("max_pages: 1000", "max_pagez: 1000"), "sources.yaml:6: sources[0].max_pagez: Extra inputs are not permitted"),
        (DOCUMENTED.replace('["http://127.0.0.1:8000/"]', '["ftp://example.org/"]'), "sources.yaml:4: sources[0].start_urls: Value error, must be an http(s) URL"),
        (DOCUMENTED.replace("name: news", "name: sample"), "sources.yaml:1: <root>: Value error, source name 'sample' is used twice"),
        (DOCUMENTED + "fetch:\n  retries: -1\n", "sources.yaml:14: fetch.retries: Input should be greater than or equal to 0"),
        ("sources: []\n", "sources.yaml:1: sources: List should have at least 1 item"),
        ("sources:\n  - kind: site\n    name: [unclosed\n", "sources.yaml:4: not valid YAML"),
        ("- just\n- a list\n", "sources.yaml:1: expected a mapping"),
    ],
)
def test_errors_name_the_field_and_line(tmp_path, text, expected):
    with pytest.raises(SourcesError) as info:
        load_sources(write(tmp_path, text))
    assert expected in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourcesError, match="cannot read sources file"):
        load_sources(tmp_path / "nope.yaml")


def test_max_delete_share_defaults_to_half_and_must_be_a_share():
    from beam_jobs.sources import SourcesConfig

    files = 'sources:\n  - {kind: files, name: a, glob: "/data/*.txt"}\n'
    assert SourcesConfig.from_yaml(files).max_delete_share == 0.5
    assert SourcesConfig.from_yaml("max_delete_share: 1\n" + files).max_delete_share == 1.0
    with pytest.raises(SourcesError, match=r"<sources>:1: max_delete_share: Input should be less than or equal to 1"):
        SourcesConfig.from_yaml("max_delete_share: 2\n" + files)
