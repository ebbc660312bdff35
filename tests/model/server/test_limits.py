"""Request limits and admission without a server."""

from __future__ import annotations

import pytest

from model.contracts.settings import Settings
from model.server.limits import Admission, LimitExceeded, Limits


def test_limits_name_the_limit_and_the_values():
    limits = Limits.from_settings(Settings(max_k=3, max_batch=5, max_prompt_tokens=10, max_new_tokens=7, max_inflight=2))
    for check, value, name in [
        (limits.check_k, 4, "max_k"),
        (limits.check_batch, 6, "max_batch"),
        (limits.check_prompt_tokens, 11, "max_prompt_tokens"),
        (limits.check_new_tokens, 8, "max_new_tokens"),
    ]:
        with pytest.raises(LimitExceeded) as err:
            check(value)
        assert (err.value.limit, err.value.value, err.value.status_code) == (name, value, 422)
        assert f"over the limit {name}=" in str(err.value)
        check(value - 1)  # at the limit is fine


def test_admission_refuses_past_max_inflight_and_frees_slots():
    admission = Admission(2)
    admission.enter()
    admission.enter()
    with pytest.raises(LimitExceeded) as err:
        admission.enter()
    assert (err.value.limit, err.value.status_code) == ("max_inflight", 503)
    admission.leave()
    admission.enter()
    assert admission.inflight == 2


def test_prompts_too_long_for_any_tokenisation_are_refused_without_tokenising():
    limits = Limits.from_settings(Settings(max_prompt_tokens=10))
    limits.check_prompt_bytes("x" * 40, longest_token_bytes=4)  # could be 10 tokens: tokenise and see
    with pytest.raises(LimitExceeded) as err:
        limits.check_prompt_bytes("é" * 21, longest_token_bytes=4)  # 42 bytes: at least 11 tokens
    assert (err.value.limit, err.value.value) == ("max_prompt_tokens", 11)


def test_query_length_limit_names_the_query():
    limits = Limits.from_settings(Settings(max_query_chars=5))
    limits.check_query_chars(["12345", "abc"])
    with pytest.raises(LimitExceeded, match="query 1 in characters is 6"):
        limits.check_query_chars(["ok", "123456"])


def test_longest_token_bounds_every_token():
    from model.contracts.tokenizer import RetroTokenizer
    from model.server.runtime import longest_token_bytes

    tokenizer = RetroTokenizer.load()
    longest = longest_token_bytes(tokenizer)
    assert longest == max(len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size))
    text = "The harbour master of the old port — naïve café. " * 50 + "<|endoftext|>"
    assert len(tokenizer.encode(text)) >= len(text.encode("utf-8")) / longest
