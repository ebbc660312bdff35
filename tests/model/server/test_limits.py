"""Request limits and admission without a server."""

from __future__ import annotations

import pytest

from model.config import Settings
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
