"""The embedding handler: the launcher's light spec equals the loaded encoder's; batches embed as
the shared Embedder does."""

from __future__ import annotations

import numpy as np
import pytest

from beam_jobs.embed import ChunkEmbeddingHandler
from model.contracts.chunking import Chunk
from model.contracts.embedder import Embedder, embedder_spec
from tests.fixtures.numerics import assert_close

pytestmark = pytest.mark.numerics


def test_spec_without_loading_equals_the_loaded_encoders(tmp_path):
    from model.contracts.embedder import default_embedder_path

    handler = ChunkEmbeddingHandler(None, torch_threads=2)
    model = handler.load_model()
    assert embedder_spec(None) == model.spec
    renamed = tmp_path / "my-encoder"
    renamed.symlink_to(default_embedder_path(), target_is_directory=True)
    assert embedder_spec(renamed).name == "my-encoder" == Embedder(renamed).spec.name

    texts = ["The mayor of X is Y.", "Cats sleep a lot, mostly in the afternoon sun.", "Prices rose."]
    chunks = [Chunk(i, "d", i, [1, 2], [], text, "u") for i, text in enumerate(texts)]
    pairs = handler.run_inference(chunks, model)
    assert [c for c, _ in pairs] == chunks
    vectors = np.stack([v for _, v in pairs])
    assert_close(vectors, model.encode([c.text for c in chunks]), magnitude=1.0)  # unit vectors; the handler batches in token-count order: other shapes
    assert_close(np.linalg.norm(vectors, axis=1), np.ones(len(vectors), dtype=np.float32))
    assert handler.batch_elements_kwargs() == {"min_batch_size": 256, "max_batch_size": 1024}
    assert handler.get_num_bytes(chunks) == sum(len(c.text) for c in chunks)


def test_a_batch_is_encoded_in_token_count_order_and_returned_in_input_order(monkeypatch):
    handler = ChunkEmbeddingHandler(None)
    model = handler.load_model()
    # Character and token counts disagree: long digit strings and rare words cut into many
    # pieces, common words into one each.
    texts = [
        "the cat and the dog and the bird and the fish",
        "9f3a7c21e4b8d05 x7q2z9",
        "Prices rose.",
        "antidisestablishmentarianism pneumonoultramicroscopic",
        "a b c d e f g h i j k l m n o p",
    ]
    chunks = [Chunk(i, "d", i, [], [], text, "u") for i, text in enumerate(texts)]
    seen: list[list[str]] = []
    encode = model.encode

    def spy(batch_texts, **kwargs):
        seen.append(list(batch_texts))
        return encode(batch_texts, **kwargs)

    monkeypatch.setattr(model, "encode", spy)  # the process's shared encoder: undone after the test
    pairs = handler.run_inference(chunks, model)
    tokens = [len(model.tokenizer(text, truncation=True, max_length=model.spec.max_length)["input_ids"]) for text in seen[0]]
    assert tokens == sorted(tokens)
    assert sorted(seen[0]) == sorted(texts)
    assert [c for c, _ in pairs] == chunks
    assert_close(np.stack([v for _, v in pairs]), encode(texts), magnitude=1.0)


class _Other:
    """Any other object a Beam Shared handle holds (weak-referenceable)."""


def test_the_shared_encoder_survives_the_shared_objects_a_run_acquires_before_it_loads():
    """A long-lived process loads the encoder once, not once per ingest.

    RunInference acquires other Beam Shared objects (its model status) at the start of every run;
    Beam's Shared keeps only the latest of all its objects alive, so an encoder held by Shared
    alone was collected between two runs and loaded again.
    """
    import gc
    import weakref

    from apache_beam.utils import shared

    from beam_jobs.embed import shared_embedder

    first = weakref.ref(shared_embedder(precision="fp32"))
    other = shared.Shared().acquire(_Other, tag="a run's model status")
    gc.collect()
    assert first() is not None, "the encoder was released: the next run would load it again"
    assert shared_embedder(precision="fp32") is first()
    del other


def test_the_weights_digest_is_kept_until_a_weight_file_changes(tmp_path):
    import hashlib

    from model.contracts.embedder import weights_sha256

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one set of weights")
    assert weights_sha256(tmp_path) == hashlib.sha256(b"one set of weights").hexdigest()
    weights.write_bytes(b"two set of weights")  # same size
    assert weights_sha256(tmp_path) == hashlib.sha256(b"two set of weights").hexdigest()
    (tmp_path / "more.safetensors").write_bytes(b"!")  # files in name order, one digest
    assert weights_sha256(tmp_path) == hashlib.sha256(b"two set of weights!").hexdigest()


def test_the_handler_embeds_in_its_precision_with_vectors_that_may_share_a_store():
    texts = ["The mayor of X is Y.", "Cats sleep a lot, mostly in the afternoon sun.", "Prices rose."]
    chunks = [Chunk(i, "d", i, [], [], text, "u") for i, text in enumerate(texts)]
    vectors = {}
    for precision in ("fp32", "bf16"):
        handler = ChunkEmbeddingHandler(None, precision=precision)
        model = handler.load_model()
        assert model.precision.precision == precision  # one shared encoder per precision, not the other's
        vectors[precision] = np.stack([v for _, v in handler.run_inference(chunks, model)])
    assert ((vectors["fp32"] * vectors["bf16"]).sum(1) >= 0.999).all()


def test_an_ingest_refuses_an_unknown_precision_before_it_reads_anything(tmp_path):
    import pytest

    from beam_jobs.ingest import run_ingest

    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16"):
        run_ingest(tmp_path / "missing.yaml", str(tmp_path / "store"), precision="half")


def test_an_oversubscribed_machine_embeds_on_one_thread_and_torchs_setting_is_left_as_it_was():
    import torch

    from beam_jobs.embed import threads_for_load

    assert threads_for_load(3.5, 2, 2) == 1  # a trainer's two threads and ours: one each would wait for the other
    assert threads_for_load(2.0, 2, 2) == 2 and threads_for_load(0.1, 2, 2) == 2
    assert threads_for_load(8.0, 16, 16) == 16
    handler = ChunkEmbeddingHandler(None)
    before = torch.get_num_threads()
    handler.run_inference([Chunk(0, "d", 0, [], [], "Prices rose.", "u")], handler.load_model())
    assert torch.get_num_threads() == before
