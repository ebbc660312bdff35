"""The change webhook: the admin token is required, strangers are refused, the rest announced."""

from __future__ import annotations

from fastapi.testclient import TestClient

from beam_jobs.sources import SourcesConfig
from flows._webhook import MAX_URLS_PER_REQUEST, create_webhook_app

CONFIG = SourcesConfig.model_validate({"sources": [
    {"kind": "site", "name": "site", "start_urls": ["http://127.0.0.1:8000/"], "allow_private": True},
    {"kind": "files", "name": "notes", "glob": "/data/notes/*.md"},
]})


def app_with(token):
    announced = []

    def announce(source, urls):
        announced.append((source, urls))
        return 1

    return TestClient(create_webhook_app(CONFIG, "/tmp/store", token, announce=announce)), announced


def test_without_a_configured_token_the_webhook_is_closed():
    client, announced = app_with(None)
    answer = client.post("/v1/changed", json={"urls": ["http://127.0.0.1:8000/a"]}, headers={"Authorization": "Bearer x"})
    assert answer.status_code == 403 and "RETROFRESH_ADMIN_TOKEN" in answer.json()["detail"]
    assert announced == []


def test_a_wrong_or_missing_token_is_refused():
    client, announced = app_with("s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
        assert client.post("/v1/changed", json={"urls": ["http://127.0.0.1:8000/a"]}, headers=headers).status_code == 401
    assert announced == []


def test_known_urls_are_announced_by_source_and_strangers_refused():
    client, announced = app_with("s3cret")
    answer = client.post("/v1/changed", headers={"Authorization": "Bearer s3cret"}, json={"urls": [
        "http://127.0.0.1:8000/a", "/data/notes/x.md", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8000/b"]})
    assert answer.status_code == 202
    body = answer.json()
    assert body["events"] == 2 and [url for url, _ in body["refused"]] == ["http://169.254.169.254/latest/meta-data/"]
    assert announced == [("site", ["http://127.0.0.1:8000/a", "http://127.0.0.1:8000/b"]), ("notes", ["/data/notes/x.md"])]


def test_only_strangers_or_bad_bodies_are_client_errors():
    client, announced = app_with("s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/changed", headers=auth, json={"urls": ["http://10.0.0.1/"]}).status_code == 422
    assert client.post("/v1/changed", headers=auth, json={"urls": []}).status_code == 422
    assert client.post("/v1/changed", headers=auth, json={"urls": ["http://127.0.0.1:8000/"] * (MAX_URLS_PER_REQUEST + 1)}).status_code == 422
    assert client.post("/v1/changed", headers=auth, content=b"{not json").status_code == 422
    assert announced == []


def test_an_unparseable_url_is_refused_with_its_reason_and_the_rest_announced():
    client, announced = app_with("s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    bad = ["http://[::1", "http://127.0.0.1:99999/x", "http://[not-an-address]/"]
    answer = client.post("/v1/changed", headers=auth, json={"urls": [*bad, "http://127.0.0.1:8000/b"]})
    assert answer.status_code == 202, answer.text
    refused = dict(answer.json()["refused"])
    assert list(refused) == bad and all(why.startswith("not a well-formed http(s) URL") for why in refused.values())
    assert announced == [("site", ["http://127.0.0.1:8000/b"])]
    alone = client.post("/v1/changed", headers=auth, json={"urls": ["http://[::1"]})
    assert alone.status_code == 422 and alone.json()["detail"]["refused"][0][0] == "http://[::1"
