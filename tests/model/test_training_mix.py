"""The neighbour mix: own passages hold the next chunk at a varying offset, never past the document."""

import numpy as np
import pytest
import torch

from model.contracts.tokenizer import RetroTokenizer
from model.training.data import Document, SequenceSet, plan_sequences
from model.training.mix import NeighbourMix

M, R, K = 64, 128, 2


def _windows(doc_lengths, seq_len=256):
    tokenizer = RetroTokenizer.load(None)
    # Token ids that say where they come from: document d, position p -> 1000·(d+1) + p.
    docs = [Document(f"d{d}", [1000 * (d + 1) + p for p in range(n)]) for d, n in enumerate(doc_lengths)]
    plan = plan_sequences(docs, tokenizer, seq_len=seq_len, chunk_tokens=M, pad_id=0)
    C = len(plan.chunk_texts)
    return SequenceSet.from_plan(plan, np.zeros((C, K, R), dtype=np.int32), np.zeros((C, K, R), dtype=bool))


def _batch(data, mix, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return data.batch(torch.arange(len(data)), "cpu", mix=mix, generator=gen)


def test_every_chunk_with_a_next_chunk_gets_its_own_passage_containing_that_chunk():
    data = _windows([300, 70, 200])
    batch = _batch(data, NeighbourMix(own_passage_rate=1.0))
    stream, nb, mask = data.inputs.reshape(-1), batch["neighbours"], batch["neighbour_mask"]
    S, L = nb.shape[:2]
    leads = set()
    for s in range(S):
        for l in range(L):
            start = (s * L + l) * M
            end = int(data.doc_end[s, l])
            filled = mask[s, l].any(-1).nonzero().flatten().tolist()
            if end <= start + M:  # the document's last chunk (or padding): nothing to copy, left alone
                assert filled == []
                continue
            assert len(filled) == 1
            tokens = nb[s, l, filled[0]][mask[s, l, filled[0]]].tolist()
            doc = stream[:end].tolist()
            next_chunk = stream[start + M : min(start + 2 * M, end)].tolist()
            at = tokens.index(next_chunk[0])
            assert tokens[at : at + len(next_chunk)] == next_chunk  # the whole next chunk is in it
            assert 8 <= at <= M  # it starts with 8 to 64 tokens of the current chunk
            assert all(t // 1000 == next_chunk[0] // 1000 for t in tokens)  # never past its own document
            assert set(tokens) <= set(doc)
            leads.add(at)
    assert len(leads) > 3  # the offset varies: the copy has to be found by content


def test_dropout_masks_whole_chunks_and_rates_of_zero_change_nothing():
    data = _windows([600])
    unchanged = _batch(data, NeighbourMix())
    assert torch.equal(unchanged["neighbours"], data.neighbours.long())
    own = _batch(data, NeighbourMix(own_passage_rate=1.0))
    dropped = _batch(data, NeighbourMix(own_passage_rate=1.0, dropout=1.0))
    assert own["neighbour_mask"].any() and not dropped["neighbour_mask"].any()
    assert data.neighbour_mask.sum() == 0  # the stored neighbours are never written to


def test_the_mix_is_a_function_of_the_seed():
    data = _windows([500, 300])
    mix = NeighbourMix(own_passage_rate=0.5, dropout=0.2)
    a, b, c = _batch(data, mix, 1), _batch(data, mix, 1), _batch(data, mix, 2)
    assert torch.equal(a["neighbours"], b["neighbours"]) and torch.equal(a["neighbour_mask"], b["neighbour_mask"])
    assert not torch.equal(a["neighbour_mask"], c["neighbour_mask"])


@pytest.mark.parametrize("field, value", [("own_passage_rate", 1.5), ("dropout", -0.1), ("min_lead", 0)])
def test_bad_rates_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        NeighbourMix(**{field: value})


@pytest.mark.parametrize("previous_token_keys", [True, False], ids=["previous-token-keys", "paper-cca"])
def test_own_passages_teach_copying_when_cca_starts_as_an_induction_head(previous_token_keys):
    """Random tokens: the only way below the unigram floor is to copy the next chunk from its passage."""
    from model.network.config import RetroConfig
    from model.network.retro import Retro
    from model.training.loop import TrainConfig, train

    torch.manual_seed(0)
    V, T, S = 512, 128, 256
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, V, (S, T + 1), generator=g)
    L = T // M
    data = SequenceSet(stream[:, :T], stream[:, 1:], torch.zeros(S, L, K, R, dtype=torch.int32), torch.zeros(S, L, K, R, dtype=torch.bool),
                       (torch.arange(S)[:, None] * T + T).expand(S, L).clone())
    config = RetroConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, cca_layers=(1, 2), enc_d_model=64, enc_n_heads=4,
                         max_seq_len=T, cca_previous_token_keys=previous_token_keys)
    model = Retro(config)
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_every=0, progress=False, own_passage_rate=1.0)
    train(model, data, None, cfg)
    with torch.no_grad():
        held = torch.arange(S - 32, S)
        _, copied = model(**data.batch(held, "cpu", mix=NeighbourMix(own_passage_rate=1.0), generator=torch.Generator().manual_seed(1)))
        _, alone = model(**data.batch(held, "cpu", retrieval=False))
    if previous_token_keys:
        assert copied < alone - 1.0, (copied, alone)
    else:  # the paper's CCA from a random init: the copy circuit has not formed yet
        assert copied > alone - 0.3, (copied, alone)
