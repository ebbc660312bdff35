"""infra/k8s: the manifests parse, fit together, and use the probes, port, flags and variables the server has."""

from __future__ import annotations

import pytest
import yaml

from tests.infra.facts import INFRA, dockerfile, retrofresh_problems, server_routes, settings_env_names

K8S = INFRA / "k8s"


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc | {"_file": path.name}
    return found


def of_kind(manifests, kind: str) -> list[dict]:
    return [m for (k, _), m in manifests.items() if k == kind]


@pytest.fixture(scope="module")
def pod(manifests) -> dict:
    (deployment,) = of_kind(manifests, "Deployment")
    return deployment["spec"]["template"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (server,) = pod["spec"]["containers"]
    return server


def test_there_is_a_deployment_services_and_a_disruption_budget(manifests):
    kinds = {k for k, _ in manifests}
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "ServiceAccount", "Secret"}
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    # Everything but the example Secret (real values never live in the repository) is applied.
    assert listed == {m["_file"] for m in manifests.values() if m["kind"] != "Secret"}


def test_the_container_runs_retrofresh_serve_with_flags_it_has(container):
    entry = [i for i in dockerfile(INFRA / "server" / "Dockerfile") if i.name == "ENTRYPOINT"][-1].words()
    assert "command" not in container  # the image's entrypoint: retrofresh serve
    assert entry[1:] == ["serve"] and retrofresh_problems([*entry[1:], *container["args"]]) == []
    port = int(container["args"][container["args"].index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]


def test_probes_ask_the_servers_own_routes(container):
    routes = server_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and "GET" in routes["/readyz"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and "GET" in routes["/healthz"]
    names = {p["name"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in names, probe


def test_variables_are_settings_and_secrets_come_from_the_secret(manifests, container):
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= settings_env_names(), set(env) - settings_env_names()
    (secret,) = of_kind(manifests, "Secret")
    for name in ("RETROFRESH_STORE", "RETROFRESH_ADMIN_TOKEN"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], name
        assert "value" not in env[name]


def test_the_checkpoint_and_cache_are_volumes(pod, container):
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    checkpoint = mounts[env["RETROFRESH_CHECKPOINT"]]
    assert checkpoint["readOnly"] and volumes[checkpoint["name"]]["csi"]["readOnly"]
    assert mounts[env["RETROFRESH_CACHE_DIR"]]["name"] in volumes


def test_resources_are_set(container):
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_replicas_services_and_budget_select_the_same_pods(manifests, pod):
    (deployment,) = of_kind(manifests, "Deployment")
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (budget,) = of_kind(manifests, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    for service in of_kind(manifests, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert pod["spec"]["serviceAccountName"] in {m["metadata"]["name"] for m in of_kind(manifests, "ServiceAccount")}
