"""In-Context RALM in the temporal evaluation: windows, losses against a plain forward, leakage control, paired rows, the CLI."""

from __future__ import annotations

import json
import math
from datetime import date

import pytest
import torch
from pydoc_data.topics import topics

from model.evaluation.documents import DatedDocument
from model.evaluation.ralm import InContextRALM
from model.evaluation.temporal import Condition, TemporalEvaluation, evaluate, score_document
from tests.fixtures.numerics import approx, assert_close
from tests.fixtures.retro import OverlapRetriever

pytestmark = [pytest.mark.numerics, pytest.mark.usefixtures("single_thread")]

M, PREFIX = 64, 128
OLD = {f"https://docs.example/old/{n}": topics[n][:1200] for n in ("assert", "for", "while")}
NEW = {f"https://docs.example/new/{n}": topics[n][:1200] for n in ("if", "try", "with")}
EVAL = [DatedDocument(topics["if"][:900], date(2024, 3, 5), url="https://docs.example/eval/if"),
        DatedDocument(topics["try"][:900], date(2024, 4, 10), id="eval-try"),
        DatedDocument(topics["with"][:900], date(2024, 4, 20), url="https://docs.example/eval/with")]


def tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ralm(retro_tokenizer) -> InContextRALM:
    """A random tiny Llama on the shipped tokenizer, so the store's neighbours need no re-encoding."""
    return InContextRALM(tiny_llama(retro_tokenizer.vocab_size), retro_tokenizer, chunk_tokens=M, prefix_tokens=PREFIX)


def plain_losses(base, window: list[int], first: int) -> torch.Tensor:
    """Nats of window[first:] from one ordinary forward pass of the whole window."""
    with torch.no_grad():
        logits = base(input_ids=torch.tensor([window])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return -logp[torch.arange(first - 1, len(window) - 1), torch.tensor(window[first:])]


def test_each_chunk_reads_the_previous_chunks_neighbours_as_text_before_its_own_prefix(ralm, retro_tokenizer):
    ids = retro_tokenizer.encode(topics["for"][:2000])[: 5 * M + 10]
    retriever = OverlapRetriever(retro_tokenizer, OLD)
    found = [nbs[:2] for nbs in retriever.retrieve([retro_tokenizer.decode(ids[u * M : (u + 1) * M]) for u in range(len(ids) // M)], 2)]
    losses = ralm.token_losses(ids, found, k=2)
    off = ralm.token_losses(ids, None, k=2)
    assert losses.shape == off.shape == (len(ids) - 1,)
    # Chunk 0 reads nothing: both agree, and equal the base on the first 64 tokens.
    assert torch.equal(losses[: M - 1], off[: M - 1])
    assert_close(off[: M - 1], plain_losses(ralm.base, ids[:M], 1))  # other lengths: other kernels
    sep = retro_tokenizer.encode("\n\n")
    for u in (1, 3, 5):
        prefix = ids[max(0, u * M - PREFIX) : u * M]
        chunk = ids[u * M : (u + 1) * M]
        nb = found[u - 1]
        # The best neighbour nearest to the text; each one is its chunk and continuation.
        window = nb[1].retrieved_tokens + sep + nb[0].retrieved_tokens + sep + prefix + chunk
        span = slice(u * M - 1, u * M - 1 + len(chunk))
        assert_close(losses[span], plain_losses(ralm.base, window, len(window) - len(chunk)))
        assert_close(off[span], plain_losses(ralm.base, prefix + chunk, len(prefix)))
    # Another neighbour for chunk 2 changes chunk 3's losses only.
    other = [list(nbs) for nbs in found]
    other[2] = list(reversed(other[2]))
    changed = ralm.token_losses(ids, other, k=2)
    differs = (changed - losses).abs() > 1e-6
    assert differs[3 * M - 1 : 4 * M - 1].any() and not differs[: 3 * M - 1].any() and not differs[4 * M - 1 :].any()


def test_window_longer_than_the_base_is_refused(retro_tokenizer):
    ralm = InContextRALM(tiny_llama(retro_tokenizer.vocab_size), retro_tokenizer, chunk_tokens=M, prefix_tokens=1024)
    ids = list(range(5, 5 + 1100))
    with pytest.raises(ValueError, match="longer than"):
        ralm.token_losses(ids, None, k=2)
    with pytest.raises(ValueError, match="prefix_tokens"):
        InContextRALM(ralm.base, retro_tokenizer, prefix_tokens=0)


def test_a_copy_in_the_index_is_read_unless_it_is_the_document_or_shares_a_13gram(ralm, retro_tokenizer):
    text = topics["for"][:1500]
    document = DatedDocument(text, date(2024, 1, 1), url="https://docs.example/eval/for")
    ids = retro_tokenizer.encode(text)
    mirror = OverlapRetriever(retro_tokenizer, {"https://mirror.example/for": text})
    result = score_document(Condition("prepend-fresh", ralm, retro_tokenizer, mirror), document, ids, k=2)
    off = score_document(Condition("prepend-none", ralm, retro_tokenizer), document, ids, k=2)
    full = len(ids) // M
    assert list(result.chunk_run[1:full]) == [M] * (full - 1)
    assert result.bits != off.bits and result.neighbours_dropped >= full - 1  # one process, the same kernels: any difference is the neighbours'
    assert result.seconds > 0 and off.seconds > 0
    own = OverlapRetriever(retro_tokenizer, {"https://docs.example/eval/for": text})
    excluded = score_document(Condition("prepend-fresh", ralm, retro_tokenizer, own), document, ids, k=2)
    assert excluded.neighbours_used == 0 and excluded.bits == approx(off.bits)


def test_evaluate_reports_prepend_rows_with_paired_differences_to_their_own_twins(ralm, tiny_retro, retro_tokenizer):
    stale = OverlapRetriever(retro_tokenizer, OLD)
    fresh = OverlapRetriever(retro_tokenizer, {**OLD, **NEW})
    conditions = [Condition("none", tiny_retro, retro_tokenizer), Condition("stale", tiny_retro, retro_tokenizer, stale, "v1"),
                  Condition("fresh", tiny_retro, retro_tokenizer, fresh, "v2"), Condition("prepend-none", ralm, retro_tokenizer),
                  Condition("prepend-stale", ralm, retro_tokenizer, stale, "v1"), Condition("prepend-fresh", ralm, retro_tokenizer, fresh, "v2")]
    result = evaluate(conditions, TemporalEvaluation(EVAL, k=2, bootstrap=200, max_tokens=150))
    c = result["conditions"]
    assert result["max_tokens"] == 150 and all(c[n]["tokens"] <= 3 * 152 for n in c)
    assert c["none"]["bytes"] == c["prepend-none"]["bytes"]  # every condition scores the same truncated text
    assert set(c["prepend-fresh"]["minus"]) == {"prepend-none", "prepend-stale"} and set(c["fresh"]["minus"]) == {"none", "stale"}
    assert set(c["prepend-stale"]["minus"]) == {"prepend-none"} and "minus" not in c["prepend-none"]
    for name, twin in (("prepend-fresh", "prepend-none"), ("prepend-fresh", "prepend-stale"), ("fresh", "none")):
        diff = c[name]["minus"][twin]
        assert diff["bpb"] == approx(c[name]["bpb"] - c[twin]["bpb"], magnitude=c[twin]["bpb"])  # a difference of two bpb
        assert diff["ci95"][0] <= diff["bpb"] + 1e-5 and diff["bpb"] - 1e-5 <= diff["ci95"][1]
    assert all(c[n]["tokens_per_s"] > 0 for n in c)
    assert "neighbours_used" not in c["prepend-none"] and c["prepend-fresh"]["neighbours_used"] > 0
    assert all("prepend-none" not in b["conditions"] and "none" not in b["conditions"] for b in result["by_overlap"])
    from model.evaluation.report import markdown

    assert "| prepend-fresh |" in markdown(result, None) and "prepend-none is that LM alone" not in markdown(result, None)


def test_overlap_buckets_compare_each_condition_with_its_own_baseline():
    import numpy as np

    from model.evaluation.temporal import DocumentScore, summarise

    def doc(bits, runs):
        return DocumentScore(bits=sum(bits), bytes=300, tokens=150, chunk_bits=np.array(bits, dtype=float), chunk_bytes=np.array([100, 100, 100]),
                             chunk_tokens=np.array([50, 50, 50]), chunk_run=np.array(runs))

    scores = {"none": [doc([300, 300, 300], [0, 0, 0])], "stale": [doc([250, 250, 250], [0, 64, 0])],
              "prepend-none": [doc([200, 200, 200], [0, 0, 0])], "prepend-stale": [doc([150, 150, 150], [0, 0, 64])]}
    result = summarise(list(scores), scores, EVAL[:1], bootstrap=0)
    bucket = next(b for b in result["by_overlap"] if b["alpha"] == 1.0)["conditions"]
    assert bucket["stale"]["none_bpb"] == 3.0 and bucket["prepend-stale"]["none_bpb"] == 2.0 and bucket["prepend-stale"]["bpb"] == 1.5
    assert result["conditions"]["prepend-stale"]["minus"] == {"prepend-none": {"bpb": -0.5, "ci95": None}}


def test_evaluate_refuses_conditions_of_two_chunk_sizes(ralm, retro_tokenizer):
    other = InContextRALM(ralm.base, retro_tokenizer, chunk_tokens=32, prefix_tokens=64)
    with pytest.raises(ValueError, match="one size"):
        evaluate([Condition("prepend-none", ralm, retro_tokenizer), Condition("none", other, retro_tokenizer)], TemporalEvaluation(EVAL, k=2))


# the command line, without a RETRO checkpoint


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory, retro_tokenizer):
    """The tiny Llama and the shipped tokenizer saved as a Hugging Face folder, as --base-model reads it."""
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("base")
    tiny_llama(retro_tokenizer.vocab_size).save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_object=retro_tokenizer._tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, retro_tokenizer, query_embedder):
    from model.store.documents import publish_documents
    from model.store import open_store

    root = tmp_path_factory.mktemp("ralm-store")
    store = open_store(root / "store", cache_dir=root / "cache")
    stale = publish_documents(store, list(OLD.items()), retro_tokenizer, query_embedder)
    fresh = publish_documents(store, list(NEW.items()), retro_tokenizer, query_embedder)
    docs = root / "eval.jsonl"
    docs.write_text("".join(json.dumps({"text": d.text, "published_at": d.published_at.isoformat(), "url": d.url or d.id}) + "\n" for d in EVAL))
    return str(root / "store"), stale, fresh, docs, root / "cache"


def test_cli_scores_in_context_ralm_alone(two_versions, saved_base, tiny_checkpoint, tmp_path):
    from click.testing import CliRunner

    from flows.cli import cli

    uri, stale, fresh, docs, cache = two_versions
    args = ["eval", "temporal", "--store", uri, "--stale-version", stale, "--docs", str(docs), "--cache-dir", str(cache), "--quiet",
            "--bootstrap", "50", "--in-context-ralm", "--base-model", str(saved_base), "--max-tokens", "200", "--k", "2"]
    result = CliRunner().invoke(cli, [*args, "--json", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report["conditions"]) == ["prepend-none", "prepend-stale", "prepend-fresh"]
    assert report["versions"] == {"prepend-stale": stale, "prepend-fresh": fresh} and report["checkpoint"] is None
    assert report["in_context_ralm"]["prefix_tokens"] == 384 and report["max_tokens"] == 200
    assert report["in_context_ralm"]["precision"] in ("fp32", "bf16")  # auto: whichever this CPU runs faster
    assert "prepend-none is that LM alone" in (tmp_path / "out" / "report.md").read_text()
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0 and "prepend-fresh" in text.output and "− prepend-stale" in text.output, text.output
    # Beside a RETRO checkpoint, both families are scored on the same documents.
    both = CliRunner().invoke(cli, [*args, "--json", "--checkpoint", str(tiny_checkpoint)])
    assert both.exit_code == 0, both.output
    rows = json.loads(both.stdout)["conditions"]
    assert list(rows) == ["none", "stale", "fresh", "prepend-none", "prepend-stale", "prepend-fresh"]
    assert rows["prepend-fresh"]["bpb"] == report["conditions"]["prepend-fresh"]["bpb"]
    bad = CliRunner().invoke(cli, [*args[:-4], "--prefix-tokens", "0"])
    assert bad.exit_code != 0 and "--prefix-tokens" in bad.output
    none = CliRunner().invoke(cli, ["eval", "temporal", "--store", uri, "--stale-version", stale, "--docs", str(docs), "--quiet"])
    assert none.exit_code != 0 and "--in-context-ralm" in none.output
