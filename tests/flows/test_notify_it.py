"""Reload notifications against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.tasks.notify import notify_servers, request_reload
from model.client import RetroConnectionError, RetroHTTPError
from tests.flows.support import TOKEN, dead_url

pytestmark = pytest.mark.integration


def test_request_reload_sends_the_bearer_token_and_reads_the_version(reload_server):
    server = reload_server(version="v000007-ff")
    outcome = request_reload(server.url, token=TOKEN)
    assert outcome.ok and outcome.swapped and outcome.status == 200 and outcome.index_version == "v000007-ff"
    assert server.requests == [{"path": "/admin/reload", "auth": f"Bearer {TOKEN}"}]


def test_a_refused_reload_is_an_outcome_not_an_exception(reload_server):
    server = reload_server()
    outcome = request_reload(server.url, token="wrong")
    assert not outcome.ok and outcome.status == 401 and "bearer token" in outcome.detail


def test_a_server_that_refuses_the_new_version_is_not_ok_and_says_why(reload_server):
    outcome = request_reload(reload_server(refuse=True).url, token=TOKEN)
    assert not outcome.ok and not outcome.swapped and outcome.index_version == "v000001-old"
    assert "checksum" in outcome.detail and "sha256 mismatch" in outcome.detail


def test_server_errors_and_unreachable_servers_raise_transient_errors(reload_server):
    from flows.common.retry import is_transient

    with pytest.raises(RetroHTTPError) as info:
        request_reload(reload_server(status=503).url, token=TOKEN)
    assert is_transient(info.value)
    with pytest.raises(RetroConnectionError) as info:
        request_reload(dead_url(), token=TOKEN, timeout_s=2)
    assert is_transient(info.value)


def test_notify_servers_reports_each_server_and_survives_a_dead_one(prefect_api, reload_server):
    good, failing = reload_server(), reload_server(status=500)
    dead = dead_url()

    @flow
    def notify_all():
        return notify_servers([good.url, failing.url, dead], TOKEN, timeout_s=2, retry_delays_s=(0, 0))

    outcomes = notify_all()
    assert [o.url for o in outcomes] == [good.url, failing.url, dead]
    assert outcomes[0].ok and outcomes[0].index_version == "v000002-abc"
    assert not outcomes[1].ok and "500" in outcomes[1].detail
    assert not outcomes[2].ok
    assert len(good.requests) == 1
    assert len(failing.requests) == 3  # the first attempt and two retries: 5xx is transient
