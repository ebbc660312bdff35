"""The compatibility contract: one typed value per party and one check with one message format."""

import dataclasses

import pytest

from model.contracts.compat import Compatibility, EmbedderSpec, Incompatible, TokenizerInfo
from model.network.config import RetroConfig
from model.store.errors import IncompatibleIndex

SPEC = EmbedderSpec(name="enc-a", dim=384, sha256="a" * 64)
TOK = TokenizerInfo(name="bpe-a", sha256="1" * 64)


def model_terms(**changes) -> Compatibility:
    base = dict(embedder=SPEC, tokenizer=TOK, chunk_tokens=64, continuation_tokens=64, source="the checkpoint ckpt", kind="model")
    return Compatibility.of(**{**base, **changes})


def index_terms(**changes) -> Compatibility:
    base = dict(embedder=SPEC, tokenizer=TOK, chunk_tokens=64, continuation_tokens=64, source="version v2", kind="index")
    return Compatibility.of(**{**base, **changes})


def test_matching_terms_pass_and_unrecorded_terms_are_not_compared():
    model_terms().check(index_terms(), fix="unused")
    Compatibility(source="a run", kind="run").check(index_terms(), fix="unused")  # records nothing
    model_terms(embedder=None).check(index_terms(embedder=dataclasses.replace(SPEC, dim=64)), fix="unused")


def test_every_mismatch_is_named_with_both_values_and_the_fix():
    other = EmbedderSpec(name="enc-b", dim=64, sha256="b" * 64)
    with pytest.raises(Incompatible) as caught:
        model_terms().check(index_terms(embedder=other, chunk_tokens=32, tokenizer=TokenizerInfo("bpe-b", "2" * 64)), fix="rebuild it")
    message = str(caught.value)
    assert message == (
        "version v2 was embedded with enc-b (dim 64, mean pooling, normalized, max_length 128, weights bbbbbbbbbbbb), "
        "the checkpoint ckpt was trained with neighbours embedded by enc-a (dim 384, mean pooling, normalized, max_length 128, "
        "weights aaaaaaaaaaaa); "
        "version v2 was chunked with tokenizer sha256 222222222222 (bpe-b), the checkpoint ckpt was trained with tokenizer "
        "sha256 111111111111 (bpe-a); "
        "version v2 has 32-token chunks, the checkpoint ckpt uses 64-token chunks; rebuild it"
    )
    with pytest.raises(Incompatible, match="has 32-token continuations, the checkpoint ckpt uses 64-token continuations"):
        model_terms().check(index_terms(continuation_tokens=32), fix="x")


def test_only_the_terms_asked_for_are_checked_and_the_error_class_is_the_callers():
    mismatched = index_terms(chunk_tokens=32)
    model_terms().check(mismatched, terms=("embedder", "tokenizer"), fix="x")
    with pytest.raises(IncompatibleIndex, match="32-token chunks"):
        model_terms().check(mismatched, terms=("chunk_tokens",), fix="x", error=IncompatibleIndex)
    assert issubclass(IncompatibleIndex, Incompatible) and issubclass(Incompatible, ValueError)
    with pytest.raises(ValueError, match="unknown term"):
        model_terms().mismatches(mismatched, ("chunk_size",))


def test_a_tokenizer_is_its_sha256_and_its_name_only_labels_it():
    model_terms().check(index_terms(tokenizer=TokenizerInfo("renamed", TOK.sha256)), fix="unused")
    assert model_terms().mismatches(index_terms(tokenizer=TokenizerInfo("bpe-a", "3" * 64))) == ["tokenizer"]


def test_config_holds_typed_values_and_writes_the_same_dicts():
    config = RetroConfig.preset("tiny", embedder=SPEC.to_dict(), tokenizer=TOK.to_dict())
    assert config.embedder == SPEC and config.tokenizer == TOK
    assert config.tokenizer["sha256"] == TOK.sha256  # reads like the dict it was
    data = config.to_dict()
    assert data["embedder"] == SPEC.to_dict() and data["tokenizer"] == {"name": "bpe-a", "sha256": "1" * 64}
    assert RetroConfig.from_dict(data) == config
    terms = Compatibility.of_config(config)
    assert (terms.embedder, terms.tokenizer_sha256, terms.chunk_tokens, terms.continuation_tokens) == (SPEC, TOK.sha256, 64, 64)
