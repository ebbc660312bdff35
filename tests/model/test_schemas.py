"""Request schemas: counts are strict integers (JSON true is not k=1)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from model.server.schemas import GenerateRequest, RetrieveRequest, ScoreRequest


@pytest.mark.parametrize("value", ["true", "false", '"3"', "2.0", "2.5"])
@pytest.mark.parametrize(
    "schema, body",
    [
        (RetrieveRequest, '{{"text": "a", "k": {}}}'),
        (GenerateRequest, '{{"prompt": "a", "k": {}}}'),
        (GenerateRequest, '{{"prompt": "a", "max_new_tokens": {}}}'),
        (GenerateRequest, '{{"prompt": "a", "top_k": {}}}'),
        (GenerateRequest, '{{"prompt": "a", "seed": {}}}'),
        (ScoreRequest, '{{"text": "a", "k": {}}}'),
    ],
)
def test_a_count_that_is_not_an_integer_is_refused(schema, body, value):
    with pytest.raises(ValidationError):
        schema.model_validate_json(body.format(value))


def test_integer_counts_still_parse():
    assert RetrieveRequest.model_validate_json('{"text": "a", "k": 3}').k == 3
    assert GenerateRequest.model_validate_json('{"prompt": "a", "seed": 0, "top_k": 5}').top_k == 5
