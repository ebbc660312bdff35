"""Training from a real local store: files indexed first, neighbours searched through the store and cached, the CLI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from pydoc_data.topics import topics

from model.store import open_store
from model.training.corpus import index_documents, read_documents
from model.training.prepare import prepare_from_view

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["for", "while", "if", "try", "with", "assert", "import", "class"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"url": f"https://docs.example/{n}", "text": topics[n][:3000]}) + "\n" for n in NAMES))
    return path


@pytest.fixture(scope="module")
def indexed_store(tmp_path_factory, corpus_file, retro_tokenizer, query_embedder):
    store = open_store(tmp_path_factory.mktemp("store") / "s", cache_dir=tmp_path_factory.mktemp("cache"))
    index_documents(store, read_documents([corpus_file]), retro_tokenizer, query_embedder)
    return store


class CountingView:
    """Passes everything to a real view, counting searches."""

    def __init__(self, view):
        self._view, self.searches = view, 0

    def search(self, *args, **kwargs):
        self.searches += 1
        return self._view.search(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._view, name)


def test_neighbours_come_from_other_documents_and_are_cached(indexed_store, retro_tokenizer, query_embedder, tmp_path):
    with indexed_store.open(embedder=query_embedder.spec) as real_view:
        view = CountingView(real_view)
        kwargs = dict(seq_len=128, k=2, chunk_tokens=64, neighbour_tokens=128, eval_fraction=0.25, cache_dir=tmp_path)
        data = prepare_from_view(view, query_embedder, retro_tokenizer, **kwargs)
        assert view.searches > 0 and data.info["documents"] == len(NAMES)
        assert len(data.train) and len(data.eval)
        # Held-out documents are packed on their own: every one of them is in the eval windows.
        assert data.info["eval"]["documents"] == round(0.25 * len(NAMES))
        assert data.info["train"]["documents"] + data.info["eval"]["documents"] == len(NAMES)
        assert (data.eval.targets != -100).sum() > 0 and data.info["eval_sequences"] == len(data.eval)
        # Map every stored chunk's retrieved tokens to its document, then check exclusion.
        by_tokens = {}
        for batch in real_view.iter_chunks():
            rows = batch.to_pydict()
            for d, toks, cont in zip(rows["doc_id"], rows["tokens"], rows["continuation"]):
                by_tokens[tuple(list(toks) + list(cont))] = d
        plan_docs = {}
        for s in range(len(data.train)):
            seq = data.train.inputs[s].tolist()
            for u in range(2):
                chunk = tuple(seq[u * 64 : (u + 1) * 64])
                owners = {d for t, d in by_tokens.items() if t[:64] == chunk}
                for j in range(2):
                    mask = data.train.neighbour_mask[s, u, j]
                    if mask.any():
                        neighbour_doc = by_tokens[tuple(data.train.neighbours[s, u, j][mask].tolist())]
                        assert neighbour_doc not in owners
                        plan_docs[neighbour_doc] = True
        assert len(plan_docs) > 2
        again = prepare_from_view(view, query_embedder, retro_tokenizer, **kwargs)
        searches = view.searches
        assert torch_equal(again.train.neighbours, data.train.neighbours) and view.searches == searches


def torch_equal(a, b):
    return bool((a == b).all())


def test_store_must_fit_the_model(indexed_store, retro_tokenizer, query_embedder):
    from model.contracts.tokenizer import train_tokenizer

    other = train_tokenizer([topics["for"]], vocab_size=300, name="other")
    with indexed_store.open(embedder=query_embedder.spec) as view:
        with pytest.raises(ValueError, match="chunked with tokenizer"):
            prepare_from_view(view, query_embedder, other, seq_len=128, k=2, chunk_tokens=64, neighbour_tokens=128)
        with pytest.raises(ValueError, match="64-token chunks"):
            prepare_from_view(view, query_embedder, retro_tokenizer, seq_len=128, k=2, chunk_tokens=32, neighbour_tokens=64)


def test_bad_corpus_files_are_clear_errors(tmp_path, indexed_store, retro_tokenizer, query_embedder):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_documents([bad])
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected an object"):
        read_documents([bad])
    with pytest.raises(FileNotFoundError):
        read_documents([tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="no text"):
        read_documents([tmp_path / "empty.txt"])
    plain = tmp_path / "a.txt"
    plain.write_text("hello")
    assert read_documents([plain]) == [(str(plain.resolve()), "hello")]
    marked = tmp_path / "bom.jsonl"  # a byte order mark, as Windows editors save UTF-8
    marked.write_bytes(b'\xef\xbb\xbf{"text": "first", "url": "u1"}\n{"text": "second", "url": "u2"}\n')
    assert read_documents([marked]) == [("u1", "first"), ("u2", "second")]
    plain.write_bytes(b"\xef\xbb\xbfhello")
    assert read_documents([plain]) == [(str(plain.resolve()), "hello")]
    with pytest.raises(ValueError, match="already has version"):
        index_documents(indexed_store, [("u", "text")], retro_tokenizer, query_embedder)


@pytest.mark.slow
def test_cli_train_score_generate(tmp_path, corpus_file):
    from flows.cli import cli

    runner = CliRunner()
    out = tmp_path / "ckpt"
    common = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(
        cli,
        ["train", "--input", str(corpus_file), "--out", str(out), "--preset", "tiny", "--seq-len", "128", "--steps", "3",
         "--batch-size", "2", "--eval-every", "0", "--quiet", *common],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["steps"] == 3 and report["eval"][-1]["loss_retrieval"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "retrofresh-retro" and config["embedder"]["name"] == "all-MiniLM-L6-v2"
    store = str(tmp_path / "ckpt-store")
    result = runner.invoke(cli, ["score", "--checkpoint", str(out), "--store", store, "--text", topics["for"][:600],
                                 "--exclude-doc", "https://docs.example/for", *common])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout[result.stdout.index("{"):])
    assert scored["retrieval"]["retrieval"] and not scored["no_retrieval"]["retrieval"]
    result = runner.invoke(cli, ["generate", "--checkpoint", str(out), "--store", store, "--prompt", topics["while"][:400],
                                 "--max-new-tokens", "70", "--seed", "0", "--json", *common])
    assert result.exit_code == 0, result.output
    generated = json.loads(result.stdout[result.stdout.index("{"):])
    assert generated["retrievals"] >= 1 and generated["index_version"].startswith("v")
    assert all(1 <= len(nbs) <= 2 for nbs in generated["neighbours"])
    assert {nb["url"] for nbs in generated["neighbours"] for nb in nbs} <= {f"https://docs.example/{n}" for n in NAMES}
    result = runner.invoke(cli, ["score", "--checkpoint", str(out), *common])
    assert result.exit_code != 0 and "exactly one of --text and --file" in result.output
    result = runner.invoke(cli, ["train", "--store", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--steps", "1", "--quiet", *common])
    assert result.exit_code == 1 and "no CURRENT version" in result.output


def test_a_model_with_another_tokenizer_gets_documents_and_neighbours_re_encoded(indexed_store, retro_tokenizer, query_embedder, corpus_file):
    """RETRO-fitting: the store keeps its tokenizer; the model's sees re-encoded text."""
    from model.contracts.tokenizer import train_tokenizer

    texts = [text for _, text in read_documents([corpus_file])]
    other = train_tokenizer(texts, vocab_size=600, name="other")
    with indexed_store.open(embedder=query_embedder.spec) as view:
        data = prepare_from_view(view, query_embedder, other, seq_len=128, k=2, chunk_tokens=64, neighbour_tokens=128,
                                 eval_fraction=0.0, store_tokenizer=retro_tokenizer)
    corpus = "".join(texts)
    assert int(data.train.inputs.max()) < other.vocab_size
    window = other.decode(data.train.inputs[0].tolist())
    assert window[:200] in corpus
    mask = data.train.neighbour_mask[0, 0, 0]
    neighbour_text = other.decode(data.train.neighbours[0, 0, 0][mask].tolist())
    assert neighbour_text[5:100] in corpus  # the store's chunk + continuation, spelled in the model's tokens
