"""Which source a change event's URL belongs to: strict origins and globs, strangers refused."""

from __future__ import annotations

from beam_jobs.sources import SourcesConfig
from beam_jobs.targets import resolve_targets, source_of

CONFIG = SourcesConfig.model_validate({
    "sources": [
        {"kind": "site", "name": "site", "start_urls": ["http://127.0.0.1:8000/"], "allow_private": True},
        {"kind": "site", "name": "docs", "start_urls": ["https://docs.example.org/"], "allowed_hosts": ["docs.example.org", "www.example.org"]},
        {"kind": "feed", "name": "news", "url": "https://news.example.org/feed.xml"},
        {"kind": "files", "name": "notes", "glob": "/data/notes/*.md"},
        {"kind": "files", "name": "bucket", "glob": "gs://bucket/docs/*.jsonl"},
    ]
})


def test_urls_go_to_the_source_whose_origin_they_share():
    assert source_of(CONFIG, "http://127.0.0.1:8000/cities/a.html") == ("site", "http://127.0.0.1:8000/cities/a.html")
    assert source_of(CONFIG, "HTTPS://Docs.Example.org/x#frag")[0] == "docs"
    assert source_of(CONFIG, "https://www.example.org/y")[0] == "docs"  # allowed_hosts, default port
    assert source_of(CONFIG, "https://news.example.org/2024/story.html")[0] == "news"
    assert source_of(CONFIG, "/data/notes/today.md") == ("notes", "/data/notes/today.md")
    assert source_of(CONFIG, "file:///data/notes/today.md")[0] == "notes"
    assert source_of(CONFIG, "gs://bucket/docs/part-1.jsonl")[0] == "bucket"


def test_urls_outside_every_source_are_refused_with_a_reason():
    for url in (
        "http://127.0.0.1:22/",  # same host, another port
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://localhost:8000/",  # another name for the same address is another origin
        "https://127.0.0.1:8000/",  # another scheme
        "ftp://127.0.0.1:8000/x",
        "/data/notes/../../etc/passwd.md",
        "/data/notes//x.md",
        "/etc/passwd",
        "relative/path.md",
        "gs://bucket/docs/../secret.jsonl",
        "gs://other/docs/a.jsonl",
    ):
        name, why = source_of(CONFIG, url)
        assert name is None, url
        assert why


def test_resolve_targets_deduplicates_bounds_and_reports():
    urls = ["http://127.0.0.1:8000/a", "http://127.0.0.1:8000/a#x", "http://evil.example/", 42]
    urls += [f"http://127.0.0.1:8000/p{i}" for i in range(10)]
    targets = resolve_targets(CONFIG, urls, max_targets=5)
    assert targets.count == 5
    assert targets.by_source["site"][0] == "http://127.0.0.1:8000/a"
    assert len(targets.deferred) == 6  # 11 distinct accepted URLs, 5 taken
    assert [url for url, _ in targets.refused] == ["http://evil.example/", "42"]


def test_a_files_glob_names_what_its_listing_shows_and_nothing_below():
    # fnmatch's "*" crosses "/": the webhook accepted (and indexed) a file the listing never shows.
    for url in ("/data/notes/sub/secret.md", "/data/notes/a/b/c.md", "gs://bucket/docs/deep/part.jsonl"):
        name, why = source_of(CONFIG, url)
        assert name is None, url
        assert why == "no files source's glob matches it"
    deep = SourcesConfig.model_validate({"sources": [{"kind": "files", "name": "tree", "glob": "/data/tree/**.md"}]})
    assert source_of(deep, "/data/tree/sub/secret.md") == ("tree", "/data/tree/sub/secret.md")


def test_the_glob_rule_is_the_listings_rule(tmp_path):
    """For each glob, the listing (Beam's own match, unfiltered) is exactly the files ``holds`` accepts."""
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs.sources import FilesSource

    files = ["a.txt", "b.md", "ab.txt", "sub/c.txt", "sub/deeper/d.txt", "sub/e.md", "x[1].txt", "other/f.txt"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    paths = [str(tmp_path / name) for name in files]
    for glob in ("*", "*.txt", "?.txt", "a*", "[ab].*", "[!a]*.txt", "*/*.txt", "sub/*", "sub/**", "**.txt", "**/d.txt",
                 "sub/", "a.txt", "sub/deeper/*.txt", "*b*"):
        source = FilesSource(kind="files", name="tree", glob=f"{tmp_path}/{glob}")
        beam_lists = {meta.path for meta in FileSystems.match([source.glob])[0].metadata_list}
        listed = [meta.path for meta in source.listing()]
        assert set(listed) == beam_lists == {p for p in paths if source.holds(p)}, glob
        assert listed == sorted(listed)


def test_a_malformed_url_is_refused_with_a_reason_not_raised():
    # urllib raises ValueError on these; a pending entry holding one stopped every targeted refresh
    for url in ("http://[::1", "http://127.0.0.1:99999/", "http://127.0.0.1:8000:x/"):
        name, why = source_of(CONFIG, url)
        assert name is None and why, url
    targets = resolve_targets(CONFIG, ["http://[::1", "http://127.0.0.1:8000/ok"])
    assert targets.by_source == {"site": ("http://127.0.0.1:8000/ok",)} and targets.refused[0][0] == "http://[::1"
