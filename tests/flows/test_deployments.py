"""Deployment specs: the built-in defaults equal infra/prefect/prefect.yaml; bad files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.deployments import DEFAULT_DEPLOYMENTS, DeploymentConfigError, load_deployments, parse_deployments, to_runner_deployments

PREFECT_YAML = Path(__file__).resolve().parents[2] / "infra" / "prefect" / "prefect.yaml"


def test_the_prefect_yaml_and_the_built_in_defaults_agree():
    from_file = load_deployments(PREFECT_YAML)
    assert [(s.name, s.entrypoint, s.schedules, s.parameters, s.tags, s.triggers) for s in from_file] == [
        (s.name, s.entrypoint, s.schedules, s.parameters, s.tags, s.triggers) for s in DEFAULT_DEPLOYMENTS
    ]


def test_the_targeted_refresh_runs_on_every_change_event_with_its_urls():
    deployments = {d.name: d for d in to_runner_deployments(load_deployments(PREFECT_YAML), {"store": "/tmp/s"})}
    (trigger,) = deployments["refresh-changed"].triggers
    assert deployments["refresh-changed"].flow_name == "refresh-changed"
    assert trigger.expect == {"retrofresh.source.changed"} and trigger.threshold == 1 and trigger.posture.value == "Reactive"
    assert trigger.parameters == {"urls": "{{ event.payload.urls }}"}  # one expression: the list stays a list
    assert deployments["refresh-changed"].schedules == [] and deployments["refresh"].triggers == []


def test_the_schedules_the_issue_asks_for():
    crons = {s.name: [x["cron"] for x in s.schedules] for s in load_deployments(PREFECT_YAML)}
    assert crons["refresh"] == ["*/15 * * * *"]  # every 15 minutes
    assert crons["compact-nightly"] == ["30 2 * * *"]
    assert crons["evaluate-daily"] == ["0 6 * * *"]
    assert crons["rollback"] == []  # on demand
    assert crons["evaluate-temporal"] == []  # on demand: each run names its documents and versions


def test_every_deployment_loads_its_flow_with_its_schedules():
    deployments = to_runner_deployments(load_deployments(PREFECT_YAML), {"store": "/tmp/s", "sources": "/tmp/x.yaml"})
    by_name = {d.name: d for d in deployments}
    assert by_name["refresh"].flow_name == "refresh-corpus"
    assert by_name["refresh"].parameters == {"runner": "local", "store": "/tmp/s", "sources": "/tmp/x.yaml"}
    assert by_name["gc-weekly"].parameters == {"keep": 10, "store": "/tmp/s"}  # gc takes no sources
    assert [s.schedule.cron for s in by_name["compact-nightly"].schedules] == ["30 2 * * *"]
    assert by_name["rollback"].schedules == []
    assert by_name["evaluate-temporal"].flow_name == "evaluate-temporal" and by_name["evaluate-temporal"].parameters == {"store": "/tmp/s"}
    assert by_name["evaluate-daily"].flow_name == "evaluate-freshness"  # the sample-world probe stays


def test_environment_placeholders_are_filled_like_prefect_deploy_does(monkeypatch):
    monkeypatch.setenv("REFRESH_CRON", "*/5 * * * *")
    specs = parse_deployments({"deployments": [{"name": "r", "entrypoint": "flows.refresh:refresh_corpus",
                                                "schedules": [{"cron": "{{ $REFRESH_CRON }}"}]}]})
    assert specs[0].schedules[0]["cron"] == "*/5 * * * *"


@pytest.mark.parametrize(
    "document, message",
    [
        ("just text", "non-empty 'deployments' list"),
        ({"deployments": []}, "non-empty 'deployments' list"),
        ({"deployments": [{"entrypoint": "flows.gc:gc_store"}]}, "missing 'name'"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc.gc_store"}]}, "module:flow"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store"}, {"name": "x", "entrypoint": "flows.gc:gc_store"}]}, "appears twice"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "schedules": [{"cron": "* * * * *", "interval": 60}]}]}, "exactly one of cron"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "schedules": [{"cron": "every day"}]}]}, "invalid cron"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "schedules": [{"interval": -5}]}]}, "invalid interval"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "parameters": [1]}]}, "'parameters' must be a mapping"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "triggers": {"expect": "e"}}]}, "'triggers' must be a list"),
        ({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "triggers": [{"type": "event", "posture": "Sideways"}]}]}, "invalid trigger"),
    ],
)
def test_bad_deployment_files_are_refused_with_the_reason(document, message):
    with pytest.raises(DeploymentConfigError, match=message):
        parse_deployments(document, source="test.yaml")


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(DeploymentConfigError, match="cannot read"):
        load_deployments(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments: [unclosed")
    with pytest.raises(DeploymentConfigError, match="not valid YAML"):
        load_deployments(bad)


def test_unknown_flows_and_parameters_are_refused():
    with pytest.raises(DeploymentConfigError, match="cannot load flows.nothing:here"):
        to_runner_deployments(parse_deployments({"deployments": [{"name": "x", "entrypoint": "flows.nothing:here"}]}))
    with pytest.raises(DeploymentConfigError, match=r"has no parameter\(s\) \['kep'\]"):
        to_runner_deployments(parse_deployments({"deployments": [{"name": "x", "entrypoint": "flows.gc:gc_store", "parameters": {"kep": 3}}]}))


def test_the_yaml_is_what_prefect_deploy_reads():
    document = yaml.safe_load(PREFECT_YAML.read_text())
    assert document["pull"] == [] and all(d["work_pool"]["name"] == "retrofresh" for d in document["deployments"])
