"""Temporal evaluation: dated documents, leakage control, overlap buckets, intervals, the CLI and its errors."""

from __future__ import annotations

import json
import math
import random
from datetime import date

import numpy as np
import pytest
from click.testing import CliRunner
from pydoc_data.topics import topics

from model.evaluation.documents import DatedDocument, DocumentsError, read_dated_documents
from model.evaluation.temporal import Condition, TemporalEvaluation, evaluate, own_document_filter, score_document
from model.network.scoring import longest_common_run, score
from tests.fixtures.retro import OverlapRetriever
from tests.fixtures.numerics import approx

pytestmark = pytest.mark.usefixtures("single_thread")

# Old documents (the stale corpus), new ones (indexed in the fresh version) and evaluated ones.
OLD = {f"https://docs.example/old/{n}": topics[n][:1200] for n in ("assert", "for", "while")}
NEW = {f"https://docs.example/new/{n}": topics[n][:1200] for n in ("if", "try", "with")}
EVAL = [
    {"text": topics["if"][:900], "published_at": "2024-03-05", "url": "https://docs.example/eval/if"},
    {"text": topics["try"][:900], "published_at": "2024-04-10T08:00:00Z", "id": "eval-try"},
    {"text": topics["with"][:900], "published_at": "2024-04-20", "id": "e3", "url": "https://docs.example/eval/with"},
]


def write_jsonl(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(line + "\n" for line in extra_lines))
    return path


# documents


def test_dated_documents_skip_bad_lines_and_count_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", EVAL, ["{not json", json.dumps({"published_at": "2024-01-01"}),
                                                    json.dumps({"text": "x", "published_at": "yesterday"}), json.dumps([1, 2]), ""])
    found = read_dated_documents(path)
    assert [d.published_at for d in found.documents] == [date(2024, 3, 5), date(2024, 4, 10), date(2024, 4, 20)]
    assert found.skipped == {"not_json": 2, "no_text": 1, "bad_date": 1}
    assert found.skipped_lines == {"not_json": [4, 7], "no_text": [5], "bad_date": [6]}
    assert found.documents[1].id == "eval-try" and found.documents[1].url is None


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("\n\n", "the file is empty"),
    ('{"text": "no date"}\n{"published_at": "2024-01-01"}\n', r"none of its 2 lines is usable \(1 no text, 1 bad date\)"),
])
def test_unusable_documents_files_say_how_to_fix_them(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DocumentsError, match=message) as info:
        read_dated_documents(path)
    assert "published_at" in str(info.value)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", EVAL)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Windows editors save UTF-8
    found = read_dated_documents(path)
    assert len(found.documents) == 3 and found.skipped["not_json"] == 0


def test_missing_and_unreadable_documents_files(tmp_path):
    with pytest.raises(DocumentsError, match="no such file"):
        read_dated_documents(tmp_path / "missing.jsonl")
    with pytest.raises(DocumentsError, match="cannot read it"):
        read_dated_documents(tmp_path)  # a directory
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9", "published_at": "2024-01-01"}\n')
    with pytest.raises(DocumentsError, match="not UTF-8"):
        read_dated_documents(tmp_path / "latin1.jsonl")


def test_own_document_filter_matches_by_id_and_by_url():
    from model.contracts.ids import doc_id
    from model.contracts.retrieval import Neighbour

    def nb(url, did=None):
        return Neighbour(chunk_id=1, doc_id=did or doc_id(url), url=url, text="", tokens=[], continuation=[], score=0.0)

    document = DatedDocument("t", date(2024, 1, 1), id="a1b2c3d4e5f60718", url="HTTPS://Docs.Example:443/eval/if#top")
    is_own = own_document_filter(document)
    assert is_own(nb("https://docs.example/eval/if"))  # same canonical URL
    assert is_own(nb("https://elsewhere.example/x", did="a1b2c3d4e5f60718"))  # the id is a store doc id
    assert not is_own(nb("https://docs.example/eval/while"))
    by_name = own_document_filter(DatedDocument("t", date(2024, 1, 1), id="eval-try"))
    assert by_name(nb("eval-try"))  # indexed from a JSONL file whose url was the id


# the overlap measure


def test_longest_common_run_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 20))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 30))]
        brute = max((n for i in range(len(a)) for j in range(len(b)) for n in range(1, min(len(a) - i, len(b) - j) + 1)
                     if a[i : i + n] == b[j : j + n]), default=0)
        assert longest_common_run(a, b) == brute


# scoring documents



def read_dated_documents_from(records):
    return [DatedDocument(r["text"], date.fromisoformat(r["published_at"][:10]), r.get("id"), r.get("url"), i + 1) for i, r in enumerate(records)]


@pytest.mark.numerics
def test_a_copy_in_the_index_shows_as_full_overlap_and_the_13gram_filter_removes_it(tiny_retro, retro_tokenizer):
    text = topics["for"][:1500]
    document = DatedDocument(text, date(2024, 1, 1), url="https://docs.example/eval/for")
    ids = retro_tokenizer.encode(text)
    copy = OverlapRetriever(retro_tokenizer, {"https://mirror.example/for": text})  # another URL: not the same document
    result = score_document(Condition("fresh", tiny_retro, retro_tokenizer, copy), document, ids, k=2)
    full = len(ids) // 64
    # Chunk u reads the neighbours of chunk u-1: the copy's chunk u-1, whose continuation *is* chunk u.
    assert list(result.chunk_run[1:full]) == [64] * (full - 1) and result.chunk_run[0] == 0
    off = score_document(Condition("none", tiny_retro, retro_tokenizer), document, ids, k=2)
    assert off.bits == approx(score(tiny_retro, retro_tokenizer, text, retriever=None).loss * off.tokens / math.log(2))
    # Each chunk's copy (continuation = its target) is dropped; other chunks of the mirror may stay.
    # Differences, not closeness: one process, the same kernels, so any difference is the neighbours' (~1e-5 bits here).
    assert result.neighbours_dropped >= full - 1 and result.bits_filtered != result.bits
    assert result.bits != off.bits
    assert result.chunk_bits.sum() == approx(result.bits) and result.chunk_bytes.sum() == result.bytes
    assert result.chunk_tokens.sum() == result.tokens == len(ids) - 1
    # The same copy under the document's own URL is never read.
    own = OverlapRetriever(retro_tokenizer, {"https://docs.example/eval/for": text})
    excluded = score_document(Condition("fresh", tiny_retro, retro_tokenizer, own), document, ids, k=2)
    assert excluded.neighbours_used == 0 and excluded.bits == approx(off.bits)


@pytest.mark.numerics
def test_evaluate_summarises_conditions_buckets_months_and_gap(tiny_retro, retro_tokenizer):
    documents = read_dated_documents_from(EVAL)
    stale = OverlapRetriever(retro_tokenizer, OLD)
    fresh = OverlapRetriever(retro_tokenizer, {**OLD, **NEW, "https://mirror.example/if": EVAL[0]["text"]})
    conditions = [Condition("none", tiny_retro, retro_tokenizer), Condition("stale", tiny_retro, retro_tokenizer, stale, "v-stale"),
                  Condition("fresh", tiny_retro, retro_tokenizer, fresh, "v-fresh"), Condition("retrained", tiny_retro, retro_tokenizer, stale, "v-fresh")]
    spec = TemporalEvaluation(documents, k=2, bootstrap=200, skipped={"not_json": 1})
    result = evaluate(conditions, spec)
    c = result["conditions"]
    assert set(c) == {"none", "stale", "fresh", "retrained"} and result["documents"] == 3
    # bpb is total bits over total bytes, recomputed here from score() document by document.
    per_doc = [score(tiny_retro, retro_tokenizer, d.text, retriever=None) for d in documents]
    bits = sum(r.loss * r.tokens / math.log(2) for r in per_doc)
    assert c["none"]["bpb"] == approx(bits / sum(r.bytes for r in per_doc))
    assert c["none"]["tokens"] == sum(r.tokens for r in per_doc) and c["none"]["docs"] == 3
    for name in c:
        lo, hi = c[name]["ci95"]
        assert lo <= c[name]["bpb"] <= hi
    assert result["fresh_minus_stale_bpb"] == approx(c["fresh"]["bpb"] - c["stale"]["bpb"], magnitude=c["stale"]["bpb"])  # a difference of two bpb
    expected_gap = (c["stale"]["bpb"] - c["fresh"]["bpb"]) / (c["stale"]["bpb"] - c["retrained"]["bpb"]) if c["stale"]["bpb"] != c["retrained"]["bpb"] else None
    assert result["gap_closed"] is None and expected_gap is None  # "retrained" here reads the stale index with the same weights
    # The mirrored document only in the fresh index: its chunks overlap fully, so low-α buckets leave them out.
    buckets = {b["alpha"]: b["conditions"] for b in result["by_overlap"]}
    assert list(buckets) == [0.125, 0.25, 0.5, 1.0]
    assert buckets[0.125]["fresh"]["share_of_tokens"] < buckets[0.125]["stale"]["share_of_tokens"]
    assert all(buckets[a]["fresh"]["tokens"] <= buckets[b]["fresh"]["tokens"] for a, b in [(0.125, 0.25), (0.25, 0.5), (0.5, 1.0)])
    assert c["fresh"]["neighbours_dropped_13gram"] > c["stale"]["neighbours_dropped_13gram"]
    assert [m["month"] for m in result["by_month"]] == ["2024-03", "2024-04"] and [m["docs"] for m in result["by_month"]] == [1, 2]
    assert result["skipped"] == {"not_json": 1, "too_short": 0}
    assert evaluate(conditions[:2], TemporalEvaluation(documents, k=2, bootstrap=0))["conditions"]["none"]["ci95"] is None


def test_gap_closed_is_the_share_of_the_stale_to_retrained_gap(tiny_retro, retro_tokenizer):
    from model.evaluation.temporal import DocumentScore, summarise

    def doc_score(bits):
        return DocumentScore(bits=bits, bytes=100, tokens=50, chunk_bits=np.array([bits]), chunk_bytes=np.array([100]),
                             chunk_tokens=np.array([50]), chunk_run=np.array([0]))

    documents = read_dated_documents_from(EVAL[:2])
    scores = {"none": [doc_score(400), doc_score(400)], "stale": [doc_score(300), doc_score(300)],
              "fresh": [doc_score(250), doc_score(250)], "retrained": [doc_score(200), doc_score(200)]}
    result = summarise(list(scores), scores, documents, bootstrap=10)
    assert result["conditions"]["stale"]["bpb"] == 3.0 and result["fresh_minus_stale_bpb"] == -0.5
    assert result["gap_closed"] == 0.5


# the command line, on a real two-version store


@pytest.fixture(scope="module")
def temporal_store(tmp_path_factory, retro_tokenizer, query_embedder):
    """A store whose first version holds OLD and whose second adds NEW and, as a leak, the evaluated documents themselves.

    A second store holds the same versions without the leak: with leakage control on, both must score alike.
    """
    from model.store.documents import publish_documents
    from model.store import open_store

    root = tmp_path_factory.mktemp("temporal")
    leaked = {**NEW, EVAL[0]["url"]: EVAL[0]["text"], EVAL[1]["id"]: EVAL[1]["text"], EVAL[2]["url"]: EVAL[2]["text"]}
    out = {}
    for name, fresh_docs in (("leaky", leaked), ("clean", NEW)):
        store = open_store(root / name, cache_dir=root / "cache")
        stale = publish_documents(store, list(OLD.items()), retro_tokenizer, query_embedder)
        fresh = publish_documents(store, list(fresh_docs.items()), retro_tokenizer, query_embedder)
        out[name] = (str(root / name), stale, fresh)
    docs = write_jsonl(root / "eval.jsonl", EVAL, ['{"text": "", "published_at": "2024-01-01"}'])
    return out, docs, root


def _run(args):
    from flows.cli import cli

    return CliRunner().invoke(cli, ["eval", "temporal", *args])


def test_cli_json_and_outputs_with_leakage_control(temporal_store, tiny_checkpoint, tmp_path):
    stores, docs, root = temporal_store
    common = ["--checkpoint", str(tiny_checkpoint), "--docs", str(docs), "--bootstrap", "100", "--json", "--quiet", "--cache-dir", str(root / "cache")]
    uri, stale, fresh = stores["leaky"]
    out = tmp_path / "out"
    result = _run(["--store", uri, "--stale-version", stale, "--control-store", stores["clean"][0], "--control-version", stores["clean"][1],
                   "--retrained-checkpoint", str(tiny_checkpoint), "--out", str(out), *common])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["conditions"]) == {"none", "stale", "fresh", "control", "retrained"}
    for name, row in report["conditions"].items():
        assert set(row) >= {"bpb", "ci95", "tokens", "docs"} and row["docs"] == 3
    assert {"fresh_minus_stale_bpb", "gap_closed", "by_overlap", "by_month", "skipped"} <= set(report)
    assert report["versions"]["fresh"] == fresh and report["versions"]["stale"] == stale
    assert report["skipped"]["no_text"] == 1
    # The same weights reading the same index: retrained equals fresh, and the gap formula has nothing to divide.
    assert report["conditions"]["retrained"]["bpb"] == report["conditions"]["fresh"]["bpb"]
    clean = json.loads(_run(["--store", stores["clean"][0], "--stale-version", stores["clean"][1], *common]).stdout)
    # Leakage control: the evaluated documents sit in the leaky fresh version, and are never read.
    assert report["conditions"]["fresh"]["bpb"] == approx(clean["conditions"]["fresh"]["bpb"])
    assert report["conditions"]["fresh"]["bpb"] != report["conditions"]["stale"]["bpb"]  # one process: any difference is the index's
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "temporal.json", "temporal.png"]
    assert (out / "temporal.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "temporal.json").read_text())["conditions"] == report["conditions"]
    text = (out / "report.md").read_text()
    assert "| fresh |" in text and "By month" in text and "no text: 1" in text


@pytest.mark.parametrize("damage, message", [
    ("truncate", "model.safetensors is damaged or truncated"),
    ("config", "config.json is not valid JSON"),
    ("config-list", "config.json holds a JSON list, not an object"),
    ("config-field", "config.json: unknown RetroConfig fields: ['colour']; restore the checkpoint's config.json"),
])
def test_cli_names_the_damaged_checkpoint_file_without_a_traceback(tiny_checkpoint, tmp_path, damage, message):
    import shutil

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    weights, config = checkpoint / "model.safetensors", checkpoint / "config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    elif damage == "config":
        config.write_text(config.read_text()[:-20])
    elif damage == "config-list":
        config.write_text("[]")
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), "colour": "blue"}))
    docs = write_jsonl(tmp_path / "eval.jsonl", EVAL)
    result = _run(["--checkpoint", str(checkpoint), "--store", str(tmp_path / "store"), "--stale-version", "v000001-aa",
                   "--docs", str(docs), "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert message in result.output and str(checkpoint) in result.output, result.output


def test_cli_refuses_inputs_that_do_not_fit(temporal_store, tiny_checkpoint, tmp_path, query_embedder):
    import torch

    from model.contracts.tokenizer import train_tokenizer
    from model.network.config import RetroConfig
    from model.network.retro import Retro

    stores, docs, root = temporal_store
    uri, stale, _ = stores["clean"]
    base = ["--store", uri, "--docs", str(docs), "--quiet", "--cache-dir", str(root / "cache")]

    def refused(args, message):
        result = _run(args)
        assert result.exit_code != 0 and message in result.output, result.output
        return result.output

    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", "v99999999-nope", *base], "does not exist")
    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", stale, "--fresh-version", "bogus!", *base], "--fresh-version")
    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", stale, "--control-version", stale, *base], "pass --control-store too")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", stale, "--store", uri, "--docs", str(empty), "--quiet"], "the file is empty")
    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", stale, "--store", uri, "--docs", str(tmp_path / "none.jsonl"), "--quiet"], "no such file")
    torch.manual_seed(0)
    other = train_tokenizer([topics["for"], topics["while"]], vocab_size=400, name="other-bpe")
    config = dict(d_model=32, n_layers=2, n_heads=4, cca_layers=(2,), enc_layers=1, max_seq_len=256)
    wrong_tokenizer = tmp_path / "wrong-tokenizer"
    Retro(RetroConfig(vocab_size=other.vocab_size, embedder=query_embedder.spec.to_dict(), **config)).save_pretrained(wrong_tokenizer, tokenizer=other)
    output = refused(["--checkpoint", str(wrong_tokenizer), "--stale-version", stale, *base], "was chunked with tokenizer")
    assert "other-bpe" in output and "--store-tokenizer" in output
    from model.contracts.tokenizer import RetroTokenizer

    shipped = RetroTokenizer.load()
    wrong_embedder = tmp_path / "wrong-embedder"
    spec = {**query_embedder.spec.to_dict(), "name": "another-encoder", "sha256": "0" * 64}
    Retro(RetroConfig(vocab_size=shipped.vocab_size, embedder=spec, **config)).save_pretrained(wrong_embedder, tokenizer=shipped)
    refused(["--checkpoint", str(wrong_embedder), "--stale-version", stale, *base], "was trained with neighbours embedded by another-encoder")
    refused(["--checkpoint", str(tiny_checkpoint), "--stale-version", stale, "--retrained-checkpoint", str(wrong_tokenizer), *base], "--retrained-checkpoint")
    refused(["--stale-version", stale, *base], "no checkpoint")
