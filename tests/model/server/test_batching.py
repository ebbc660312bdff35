"""The retrieve batcher embeds at a bounded set of input shapes, however requests vary.

Each new input shape makes the CPU kernels allocate memory they keep (the server's RSS grew
without bound under retrieve batches of every size); a bounded set of shapes bounds it.
"""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from model.contracts.embedder import SHAPE_STEP
from model.server.batching import RetrieveBatcher, _Pending
from tests.fixtures.numerics import assert_close

WORDS = "harbour master old port mayor river town price bread market winner spring regatta".split()


class RecordingView:
    """Answers every query with no neighbours; keeps the vectors it was asked with."""

    def __init__(self):
        self.vectors = []

    def search(self, vectors, k):
        self.vectors.append(vectors)
        return [[] for _ in range(len(vectors))]


class Loaded:
    def __init__(self, view):
        self.view = view


@pytest.fixture
def shapes(query_embedder):
    seen: list[tuple[int, int]] = []
    handle = query_embedder.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    yield seen
    handle.remove()


def test_batches_of_every_size_and_length_run_at_few_shapes(query_embedder, shapes):
    rng = random.Random(0)
    batcher = RetrieveBatcher(query_embedder)
    view = RecordingView()
    loop = asyncio.new_event_loop()
    try:
        for _ in range(60):
            texts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 90))) for _ in range(rng.randint(1, 40))]
            batcher._search([_Pending(Loaded(view), texts, 2, loop.create_future())])
    finally:
        loop.close()
    distinct = set(shapes)
    assert all(b & (b - 1) == 0 and t % SHAPE_STEP == 0 for b, t in distinct), distinct
    assert len(distinct) <= 7 * (128 // SHAPE_STEP)  # batch 1..64 by powers of two, length 16..128


@pytest.mark.numerics
def test_fixed_shapes_give_the_same_vectors(query_embedder):
    texts = [" ".join(WORDS[: 1 + i % len(WORDS)]) for i in range(45)]
    plain = query_embedder.encode(texts)
    fixed = query_embedder.encode(texts, fixed_shapes=True)
    assert_close(fixed, plain, magnitude=1.0)  # unit vectors, padded to other shapes: other kernels
