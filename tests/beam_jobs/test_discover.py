"""Discovery parsers: sitemaps (plain, gzipped, index, broken), feeds, links."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

from beam_jobs.discover import extract_links, file_kind, parse_datetime, parse_feed, parse_sitemap

SITEMAP = b"""<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>http://s/a.html</loc><lastmod>2024-02-05</lastmod></url>
  <url><loc>/b.html</loc><lastmod>2024-02-05T10:00:00+02:00</lastmod></url>
  <url><loc>http://s/c.html</loc></url>
  <url><lastmod>2024-01-01</lastmod></url>
</urlset>"""


def test_sitemap_urls_with_lastmod():
    entries = parse_sitemap(SITEMAP, "http://s/sitemap.xml")
    assert entries.urls == [
        ("http://s/a.html", datetime(2024, 2, 5, tzinfo=timezone.utc)),
        ("http://s/b.html", datetime(2024, 2, 5, 8, tzinfo=timezone.utc)),
        ("http://s/c.html", None),
    ]
    assert entries.sitemaps == []


def test_gzipped_sitemap_index():
    index = b'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>http://s/one.xml.gz</loc></sitemap></sitemapindex>'
    entries = parse_sitemap(gzip.compress(index), "http://s/sitemap.xml")
    assert entries.sitemaps == ["http://s/one.xml.gz"] and entries.urls == []


def test_broken_sitemaps_yield_nothing():
    for body in (b"", b"not xml at all", gzip.compress(b"x" * 10)[:-4], b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><urlset><url><loc>&e;</loc></url></urlset>'):
        entries = parse_sitemap(body, "http://s/sitemap.xml")
        assert all("root:" not in u for u, _ in entries.urls)


def test_feed_entries_with_dates_rss_and_atom():
    rss = b"""<rss version="2.0"><channel><title>t</title>
      <item><title>One</title><link>http://s/1.html</link><pubDate>Mon, 05 Feb 2024 00:00:00 GMT</pubDate></item>
      <item><title>No link</title></item></channel></rss>"""
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
      <entry><title>Two</title><link href="/2.html"/><updated>2024-02-06T12:00:00Z</updated></entry></feed>"""
    (one,) = parse_feed(rss, "http://s/feed.xml")
    (two,) = parse_feed(atom, "http://s/atom.xml")
    assert (one.link, one.title, one.published_at) == ("http://s/1.html", "One", datetime(2024, 2, 5, tzinfo=timezone.utc))
    assert (two.link, two.published_at) == ("http://s/2.html", datetime(2024, 2, 6, 12, tzinfo=timezone.utc))
    assert parse_feed(b"<<garbage", "http://s/feed.xml") == []


def test_links_are_absolute_unique_http_and_honour_base():
    html = b"""<html><head><base href="http://s/dir/"></head><body>
      <a href="a.html#top">a</a><a href="a.html">again</a><a href="/b.html">b</a>
      <a href="mailto:x@y">m</a><a href="javascript:void(0)">j</a><a href="ftp://s/f">f</a>
      <a href="http://[::1">bad</a><a href="http://other/c.html">c</a></body></html>"""
    assert extract_links(html, "http://s/page.html") == ["http://s/dir/a.html", "http://s/b.html", "http://other/c.html"]
    assert extract_links(b"", "http://s/") == [] and extract_links(b"\x00\x01", "http://s/") == []


def test_small_helpers():
    assert parse_datetime("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, tzinfo=timezone.utc)
    assert parse_datetime("2024-05-01") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert parse_datetime("yesterday") is None and parse_datetime(None) is None
    assert [file_kind(p) for p in ("a.TXT", "b.md", "c.html", "d.jsonl", "e.pdf")] == ["text", "markdown", "html", "jsonl", None]


def test_a_malformed_url_costs_only_itself(caplog):
    # urllib raises ValueError on each of these; one of them in a sitemap stopped the whole refresh
    bad = ["http://[::1", "http://s:99999/x", "http://s:port/x", "http://[::1/a]b"]
    body = "".join(f"<url><loc>{loc}</loc></url>" for loc in bad)
    index = b"<sitemapindex><sitemap><loc>http://[::1</loc></sitemap><sitemap><loc>/two.xml</loc></sitemap></sitemapindex>"
    entries = parse_sitemap(f"<urlset>{body}<url><loc>/ok.html</loc></url></urlset>".encode(), "http://s/sitemap.xml")
    assert entries.urls == [("http://s/ok.html", None)]
    assert parse_sitemap(index, "http://s/sitemap.xml").sitemaps == ["http://s/two.xml"]
    assert "dropped 4 malformed URLs" in caplog.text
    rss = b"""<rss version="2.0"><channel><title>t</title><item><title>Bad</title><link>http://[::1</link></item>
      <item><title>Good</title><link>http://s/1.html</link></item></channel></rss>"""
    assert [e.link for e in parse_feed(rss, "http://s/feed.xml")] == ["http://s/1.html"]
    page = b'<html><head><base href="http://[::1"></head><body><a href="a.html">a</a><a href="http://s:70000/">b</a></body></html>'
    assert extract_links(page, "http://s/dir/page.html") == ["http://s/dir/a.html"]  # the page's own URL is the base


def test_web_url_and_ids_never_raise():
    from model.contracts.ids import canonical_url, doc_id, web_url

    assert web_url("b.html#top", "http://s/dir/a.html") == "http://s/dir/b.html"
    assert web_url(" HTTP://S:8080/x ") == "HTTP://S:8080/x"
    assert web_url("http://[::1]:8000/") == "http://[::1]:8000/"
    for bad in ("http://[::1", "http://s:99999/", "http://s:x/", "ftp://s/f", "http:///x", "/relative", "http://a b/", None, 3):
        assert web_url(bad) is None, bad
    assert web_url("x", "http://[::1") is None  # a malformed base too
    assert canonical_url("http://[::1") == "http://[::1" and len(doc_id("http://s:99999/")) == 16
