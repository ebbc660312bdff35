"""Extraction: decoding, binary refusal, normalisation, .jsonl records, hashes."""

from __future__ import annotations

import json
import os

import pytest

from beam_jobs.extract import ExtractionError, decode, document_text, extract_html, extract_plain, looks_binary, normalise, observe
from beam_jobs.types import FAILED, FETCHED, FetchResult
from model.contracts.ids import content_hash, doc_id

PARAGRAPH = "A sentence of ordinary prose that is long enough to count as the main text of a page. " * 4


def fetched(body: bytes, kind: str = "html", url: str = "http://site/a.html", charset=None) -> FetchResult:
    return FetchResult(url=url, source="s", outcome=FETCHED, kind=kind, body=body, charset=charset, final_url=url)


def test_normalise_collapses_whitespace_and_blank_lines():
    assert normalise("  a\u00a0 b\t c \r\n\r\n\r\n  d\u200b e  ") == "a b c\n\nd e"
    assert normalise("e\u0301") == "\u00e9"  # NFC


@pytest.mark.parametrize(
    "body, charset, html, expected",
    [
        ("Grüße aus Köln".encode("utf-8"), None, False, "Grüße aus Köln"),
        ("Grüße aus Köln".encode("latin-1"), "iso-8859-1", False, "Grüße aus Köln"),
        ('<meta charset="windows-1251"><p>Привет мир</p>'.encode("cp1251"), None, True, "Привет мир"),
        ("Le café crème brûlée, déjà vu à Noël.".encode("cp1252"), None, False, "Le café crème brûlée, déjà vu à Noël."),
        ("Grüße".encode("utf-8"), "no-such-charset", False, "Grüße"),
    ],
)
def test_decode_follows_declarations_then_utf8_then_detection(body, charset, html, expected):
    assert expected in decode(body, charset, html=html)


def test_binary_is_refused_and_text_is_not():
    assert looks_binary(os.urandom(4096)) and looks_binary(b"%PDF\x00\x01\x02")
    assert not looks_binary(PARAGRAPH.encode()) and not looks_binary("Ünïcödé".encode("utf-16-le")[:0])
    with pytest.raises(ExtractionError) as info:
        extract_html(os.urandom(4096), None, "http://x/")
    assert info.value.reason == "binary"


def test_html_without_main_text_is_no_text():
    with pytest.raises(ExtractionError) as info:
        extract_html(b"<html><head><title>t</title></head><body><script>var x = 1;</script></body></html>", None, "http://x/")
    assert info.value.reason == "no_text"


def test_title_leads_the_document_text_once():
    page = f"<html><head><title>Harbour news</title></head><body><article><p>{PARAGRAPH}</p></article></body></html>".encode()
    extracted = extract_html(page, "utf-8", "http://x/")
    text = document_text(extracted)
    assert extracted.title == "Harbour news" and text.startswith("Harbour news\n\n") and text.count("Harbour news") == 1


def test_markdown_title_is_its_first_heading():
    extracted = extract_plain(b"# Release notes\n\nSome   text.\n", None, markdown=True)
    assert extracted.title == "Release notes" and document_text(extracted) == "# Release notes\n\nSome text."


def test_observation_hashes_the_normalised_text():
    (obs,) = observe(fetched(f"<html><body><article><p>{PARAGRAPH}</p></article></body></html>".encode()))
    assert obs.outcome == FETCHED and obs.doc_id == doc_id("http://site/a.html")
    assert obs.content_hash == content_hash(obs.text)


def test_failed_extraction_becomes_a_failed_observation():
    (obs,) = observe(fetched(os.urandom(2048)))
    assert (obs.outcome, obs.reason, obs.text) == (FAILED, "binary", None)


def test_jsonl_yields_one_document_per_record_and_reports_bad_lines():
    lines = [
        json.dumps({"id": "a", "text": "First document.", "title": "One", "published_at": "2024-03-01"}),
        json.dumps({"url": "https://example.org/b", "text": "Second   document."}),
        "{not json",
        json.dumps({"id": "c"}),
        json.dumps({"text": "no identity"}),
        "",
    ]
    errors = []
    docs = list(observe(fetched("\n".join(lines).encode(), kind="jsonl", url="/data/x.jsonl"), errors))
    assert [d.url for d in docs] == ["/data/x.jsonl#a", "https://example.org/b"]
    assert docs[0].doc_id == doc_id("s:a") and docs[1].doc_id == doc_id("https://example.org/b")
    assert docs[0].text == "One\n\nFirst document." and docs[0].published_at.isoformat().startswith("2024-03-01")
    assert docs[1].text == "Second document."
    assert [e.reason for e in errors] == ["bad_record"] * 3
    with pytest.raises(ExtractionError):
        list(observe(fetched(b"{not json", kind="jsonl")))


def test_one_bad_byte_fails_its_own_jsonl_line_and_leaves_the_neighbours_alone():
    body = b"\n".join([
        json.dumps({"id": "a", "text": "Café Müller öffnet um acht."}, ensure_ascii=False).encode("utf-8"),
        b'{"id": "b", "text": "stray \xff byte"}',
        json.dumps({"id": "c", "text": "Ελληνικά και 日本語."}, ensure_ascii=False).encode("utf-8"),
    ])  # fmt: skip
    errors = []
    docs = list(observe(fetched(body, kind="jsonl", url="/data/x.jsonl"), errors))
    assert [d.text for d in docs] == ["Café Müller öffnet um acht.", "Ελληνικά και 日本語."]
    assert [e.reason for e in errors] == ["bad_encoding"]
    assert "/data/x.jsonl:2:" in str(errors[0]) and "UTF-8" in str(errors[0])


def test_a_jsonl_file_in_a_declared_legacy_encoding_is_read_line_by_line():
    lines = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in enumerate(["Le café crème brûlée, déjà vu à Noël."] * 2)]
    docs = list(observe(fetched("\n".join(lines).encode("cp1252"), kind="jsonl", charset="windows-1252"), []))
    assert [d.text for d in docs] == ["Le café crème brûlée, déjà vu à Noël."] * 2


def test_jsonl_lines_split_on_newlines_only_and_a_bom_is_dropped():
    # U+2028 is legal unescaped inside a JSON string; str.splitlines() would cut the record there.
    body = "\ufeff".encode() + json.dumps({"id": "a", "text": "one\u2028two"}, ensure_ascii=False).encode() + b"\r\n"
    errors = []
    (doc,) = observe(fetched(body, kind="jsonl"), errors)
    assert errors == [] and doc.text == "one two"  # one record (normalise makes U+2028 a space)


def test_a_record_over_the_size_limit_is_a_counted_failure_that_keeps_its_identity():
    from beam_jobs.extract import SizeLimit

    limit = SizeLimit(max_bytes=200, max_chunks=1000)
    lines = [
        json.dumps({"id": "small", "text": "A short record."}),
        json.dumps({"id": "big", "text": "word " * 100}),  # 500 bytes of text
        json.dumps({"id": "huge", "text": "x" * 1300}),  # > 6 x 200 bytes: not even parsed
    ]
    errors = []
    docs = list(observe(fetched("\n".join(lines).encode(), kind="jsonl", url="/d/x.jsonl"), errors, limit))
    assert [(d.doc_id, d.outcome, d.reason) for d in docs] == [(doc_id("s:small"), FETCHED, None), (doc_id("s:big"), FAILED, "too_large")]
    assert docs[1].text is None and docs[1].content_hash is None
    assert [e.reason for e in errors] == ["too_large"] and "/d/x.jsonl:3:" in str(errors[0])
    (page,) = observe(fetched(("word " * 100).encode(), kind="text"), [], limit)
    assert (page.outcome, page.reason) == (FAILED, "too_large")


def test_the_chunk_limit_counts_the_model_tokenizer_tokens():
    from beam_jobs.extract import SizeLimit
    from model.contracts.tokenizer import RetroTokenizer

    tokenizer = RetroTokenizer.load()
    text = "東京 😀 " * 200  # few bytes per token: over 2 chunks long well before 10 kB
    tokens = len(tokenizer.encode(text))
    assert tokens > 2 * 64 and len(text.encode()) < 10_000
    assert SizeLimit(10_000, 2, lambda t: len(tokenizer.encode(t))).refusal(text) == f"{-(-tokens // 64)} chunks, over documents.max_chunks=2"
    assert SizeLimit(10_000, -(-tokens // 64), lambda t: len(tokenizer.encode(t))).refusal(text) is None
