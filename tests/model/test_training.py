"""Training: sequence planning, neighbour precompute + cache, the loop (schedule, resume), and a copy task."""

import json
import math

import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

from model.contracts.chunking import chunk_document
from model.contracts.retrieval import Neighbour
from model.network.config import RetroConfig
from model.network.retro import IGNORE_INDEX, Retro
from model.training.data import Document, SequenceSet, documents_from_texts, plan_sequences, split_documents
from model.training.loop import TrainConfig, lr_at, train
from model.training.neighbours import NeighbourCache, cache_key, precompute_neighbours
from tests.fixtures.numerics import assert_close

pytestmark = pytest.mark.usefixtures("single_thread")

DOCS = {f"doc{i}": topics[name] for i, name in enumerate(["for", "while", "if", "try", "with", "assert", "import", "function"])}


def test_plan_aligns_windows_with_store_chunks(retro_tokenizer):
    docs = documents_from_texts(DOCS.items(), retro_tokenizer)
    plan = plan_sequences(docs, retro_tokenizer, seq_len=256)
    flat_inputs = plan.inputs.reshape(-1)
    flat_targets = plan.targets.reshape(-1)
    cursor = 0
    for doc in docs:
        chunks = chunk_document(doc.tokens, doc_id=doc.doc_id, url="u", content_hash="h", tokenizer=retro_tokenizer)
        n = len(doc.tokens)
        assert flat_inputs[cursor : cursor + n].tolist() == doc.tokens
        assert flat_targets[cursor : cursor + n - 1].tolist() == doc.tokens[1:]
        assert (flat_targets[cursor + n - 1 : cursor + len(chunks) * 64] == IGNORE_INDEX).all()
        first_chunk = cursor // 64
        # Every chunk of a window is exactly one stored chunk: same text, same document.
        assert plan.chunk_texts[first_chunk : first_chunk + len(chunks)] == [c.text for c in chunks]
        assert set(plan.chunk_doc_ids[first_chunk : first_chunk + len(chunks)]) == {doc.doc_id}
        cursor += len(chunks) * 64
    assert len(plan.chunk_texts) == plan.inputs.size // 64
    assert plan.data_hash() == plan_sequences(docs, retro_tokenizer, seq_len=256).data_hash()
    with pytest.raises(ValueError, match="multiple"):
        plan_sequences(docs, retro_tokenizer, seq_len=100)
    with pytest.raises(ValueError, match="no tokens"):
        plan_sequences([], retro_tokenizer, seq_len=128)


def test_split_holds_out_whole_documents():
    docs = [Document(f"d{i}", [1, 2, 3]) for i in range(20)]
    train, evaluation = split_documents(docs, 0.25, seed=3)
    assert len(evaluation) == 5 and len(train) == 15
    assert {d.doc_id for d in train}.isdisjoint({d.doc_id for d in evaluation})
    assert train == [d for d in docs if d not in evaluation]  # each side keeps the corpus order
    assert split_documents(docs, 0.25, seed=3) == (train, evaluation)  # seeded
    assert split_documents(docs[:2], 0.01)[1] != []  # a positive fraction holds out at least one
    assert split_documents(docs, 0.0) == (docs, [])
    with pytest.raises(ValueError):
        split_documents(docs, 1.0)


class ExactSearch:
    """Brute-force inner-product search over chunk vectors (what a store's search does)."""

    def __init__(self, vectors, neighbours):
        self.vectors, self.neighbours, self.calls = vectors, neighbours, 0

    def __call__(self, queries, k, exclude_doc_ids):
        self.calls += 1
        scores = queries @ self.vectors.T
        out = []
        for row, banned in zip(scores, exclude_doc_ids):
            order = [j for j in np.argsort(-row) if self.neighbours[j].doc_id != banned]
            out.append([self.neighbours[j] for j in order[:k]])
        return out


def bag_of_tokens(tokenizer, texts):
    """A deterministic embedding: L2-normalised token counts (enough to test the plumbing)."""
    vectors = np.zeros((len(texts), tokenizer.vocab_size), dtype=np.float32)
    for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
        np.add.at(vectors[i], ids, 1.0)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def test_precompute_excludes_own_document_and_caches(retro_tokenizer, tmp_path):
    docs = documents_from_texts(DOCS.items(), retro_tokenizer)
    plan = plan_sequences(docs, retro_tokenizer, seq_len=256)
    stored = []
    for doc in docs:
        for c in chunk_document(doc.tokens, doc_id=doc.doc_id, url="u", content_hash="h", tokenizer=retro_tokenizer):
            stored.append(Neighbour(c.chunk_id, c.doc_id, c.url, c.text, c.tokens, c.continuation, 0.0, c.position))
    search = ExactSearch(bag_of_tokens(retro_tokenizer, [n.text for n in stored]), stored)
    embed = lambda texts: bag_of_tokens(retro_tokenizer, texts)  # noqa: E731
    ids, mask = precompute_neighbours(plan, embed=embed, search=search, k=2, r=128, batch_size=16)
    n_chunks = len(plan.chunk_texts)
    assert ids.shape == mask.shape == (n_chunks, 2, 128) and ids.dtype == np.int32
    by_tokens = {tuple(n.retrieved_tokens[:128]): n for n in stored}
    for i, doc in enumerate(plan.chunk_doc_ids):
        if not doc:  # trailing padding chunk: no query, nothing valid
            assert not mask[i].any()
            continue
        for j in range(2):
            found = by_tokens[tuple(ids[i, j][mask[i, j]].tolist())]
            assert found.doc_id != doc
    key = cache_key(data_hash=plan.data_hash(), index_version="v1", embedder={"name": "bag"}, k=2, r=128, tokenizer_sha256="t")
    cache = NeighbourCache(tmp_path)
    assert cache.load(key) is None
    cache.save(key, ids, mask)
    ids2, mask2 = cache.load(key)
    assert np.array_equal(ids, ids2) and np.array_equal(mask, mask2)
    assert key != cache_key(data_hash=plan.data_hash(), index_version="v2", embedder={"name": "bag"}, k=2, r=128, tokenizer_sha256="t")

    def leaky(queries, k, exclude):
        return [[stored[0]] for _ in queries]

    with pytest.raises(RuntimeError, match="own document"):
        precompute_neighbours(plan, embed=embed, search=leaky, k=2, r=128)


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def random_set(n=16, T=128, V=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T + 1), generator=g)
    nb = torch.randint(0, V, (n, T // 64, 2, 128), generator=g, dtype=torch.int32)
    return SequenceSet(x[:, :-1], x[:, 1:], nb, torch.ones(n, T // 64, 2, 128, dtype=torch.bool))


def small_model(V=64):
    torch.manual_seed(0)
    return Retro(RetroConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, cca_layers=(2,), enc_layers=1, max_seq_len=128))


@pytest.mark.numerics
def test_resume_continues_exactly(tmp_path):
    data = random_set()
    straight = small_model()
    train(straight, data, None, TrainConfig(steps=6, batch_size=4, warmup_steps=2, progress=False))
    first = small_model()
    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=2, progress=False, out_dir=str(tmp_path / "ckpt"))
    train(first, data, None, cfg)
    state = json.loads((tmp_path / "ckpt" / "training_state.json").read_text())
    assert state["step"] == 3 and state["extra"]["train_config"]["steps"] == 3
    resumed = small_model()  # fresh weights: resume must load them
    cfg.steps = 6
    result = train(resumed, data, None, cfg, resume=True)
    assert result.steps == 6
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert_close(b, a, msg=name)
    loaded = Retro.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(loaded.wte.weight, resumed.wte.weight)


def test_training_reports_eval_with_and_without_retrieval_and_rejects_bad_data():
    data = random_set()
    result = train(small_model(), data, data.subset(slice(0, 4)), TrainConfig(steps=4, batch_size=4, eval_every=2, eval_batches=1, progress=False))
    assert [e.step for e in result.evals] == [2, 4]
    assert all(math.isfinite(e.loss_retrieval) and math.isfinite(e.loss_no_retrieval) for e in result.evals)
    assert result.tokens_per_s > 0
    with pytest.raises(ValueError, match="empty"):
        train(small_model(), data.subset(slice(0, 0)), None, TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="together"):
        SequenceSet(data.inputs, data.targets, data.neighbours, None)
    with pytest.raises(ValueError, match="out_dir"):
        train(small_model(), data, None, TrainConfig(steps=1, progress=False), resume=True)


@pytest.mark.slow
def test_max_minutes_stops_the_run_and_still_saves(tmp_path):
    data = random_set()
    cfg = TrainConfig(steps=50, batch_size=4, warmup_steps=2, progress=False, max_minutes=1e-9, out_dir=str(tmp_path / "ckpt"))
    result = train(small_model(), data, data.subset(slice(0, 4)), cfg)
    assert result.steps == 1 and [e.step for e in result.evals] == [1]  # the first step passes the budget
    from model.network.checkpoint import TRAINING_STATE_JSON

    assert json.loads((tmp_path / "ckpt" / TRAINING_STATE_JSON).read_text())["step"] == 1


def test_copy_task_retrieval_lowers_loss():
    """Random tokens are unpredictable without retrieval (the floor is ln V); each chunk's first
    neighbour holds the chunk that follows, so a model that learns to copy through CCA beats it."""
    m, T, V, S = 16, 64, 256, 512
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, V, (S, T + m), generator=g)
    L = T // m
    other = torch.randperm(S, generator=g)
    nb = torch.stack([torch.stack([seqs[:, u * m : u * m + 2 * m], seqs[other, u * m : u * m + 2 * m]], 1) for u in range(L)], 1)
    data = SequenceSet(seqs[:, :T], seqs[:, 1 : T + 1], nb.int(), torch.ones(S, L, 2, 2 * m, dtype=torch.bool))
    train_set, eval_set = data.subset(slice(0, S - 32)), data.subset(slice(S - 32, S))
    torch.manual_seed(0)
    config = RetroConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, cca_layers=(1, 2), enc_layers=1, max_seq_len=T, chunk_tokens=m, continuation_tokens=m)
    cfg = TrainConfig(steps=250, batch_size=16, lr=1e-2, min_lr=3e-4, warmup_steps=20, eval_every=0, eval_batches=2, progress=False)
    result = train(Retro(config), train_set, eval_set, cfg)
    final = result.evals[-1]
    floor = math.log(V)
    assert final.loss_retrieval < floor - 0.4, final
    assert final.loss_retrieval < final.loss_no_retrieval - 0.4, final


@pytest.mark.slow
@pytest.mark.numerics
def test_compiled_training_matches_eager():
    """--compile changes how the step runs, not what it computes (the wrapper shares the weights)."""
    data = random_set()
    eager, compiled = small_model(), small_model()
    train(eager, data, None, TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False))
    result = train(compiled, data, None, TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False, compile=True))
    assert result.steps == 3
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        # Adam divides each update by the gradient's running RMS: where a gradient is near zero, a
        # roundoff difference between Inductor's kernels and eager ones becomes a visible difference
        # of the weight, so three steps are compared to ~1e-3 relative, not to roundoff.
        assert_close(b, a, ulps=2**13, msg=name)
