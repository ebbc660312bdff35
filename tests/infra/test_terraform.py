"""infra/terraform: it parses (python-hcl2), every variable and output says what it is, and IAM is least privilege."""

from __future__ import annotations

import re

import hcl2
import pytest

from tests.infra.facts import INFRA, REPO

TERRAFORM = INFRA / "terraform"


def unquote(value):
    """python-hcl2 keeps the quotes of strings and block labels; drop them, recursively."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


@pytest.fixture(scope="module")
def config() -> dict[str, list]:
    merged: dict[str, list] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as f:
            for block, items in unquote(hcl2.load(f)).items():
                merged.setdefault(block, []).extend(items)
    return merged


def named(config, block: str) -> dict[str, dict]:
    return {name: body for item in config.get(block, []) for name, body in item.items()}


def resources(config, kind: str) -> dict[str, dict]:
    return {name: body for item in config["resource"] for k, by_name in item.items() if k == kind for name, body in by_name.items()}


def test_variables_have_descriptions_and_types(config):
    variables = named(config, "variable")
    assert {"project", "region"} <= set(variables)
    for name, body in variables.items():
        assert len(body.get("description", "")) > 10 and "type" in body, name


def test_every_variable_is_declared_and_used(config):
    declared = set(named(config, "variable"))
    text = "\n".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    used = set(re.findall(r"\bvar\.([a-z_]+)", text))
    assert used == declared, (used - declared, declared - used)


def test_outputs_say_what_they_are_and_the_docs_ask_only_for_real_ones(config):
    outputs = named(config, "output")
    for name, body in outputs.items():
        assert len(body.get("description", "")) > 10, name
    docs = [REPO / "docs" / "DEPLOY.md", *INFRA.rglob("*.md"), *INFRA.rglob("*.yaml")]
    asked = {m for doc in docs if doc.exists() for m in re.findall(r"terraform[^\n]*? output(?: -raw)? ([a-z_]+)", doc.read_text())}
    asked |= {m for doc in docs if doc.exists() for m in re.findall(r"terraform output ([a-z_]+)", doc.read_text())}
    assert asked and asked <= set(outputs), asked - set(outputs)


def test_the_apis_the_deployment_uses_are_enabled(config):
    apis = set(named(config, "variable")["enable_apis"]["default"])
    assert {"storage.googleapis.com", "dataflow.googleapis.com", "artifactregistry.googleapis.com", "compute.googleapis.com"} <= apis
    assert resources(config, "google_project_service")["apis"]["for_each"]


def test_the_store_bucket_cleans_up_what_gc_deleted(config):
    store = resources(config, "google_storage_bucket")["store"]
    assert store["versioning"][0]["enabled"] is True
    conditions = [rule["condition"][0] for rule in store["lifecycle_rule"]]
    actions = [rule["action"][0]["type"] for rule in store["lifecycle_rule"]]
    # Objects `retrofresh index gc` deleted become noncurrent generations, removed after the window.
    assert any("days_since_noncurrent_time" in c for c in conditions) and any("num_newer_versions" in c for c in conditions)
    assert set(actions) <= {"Delete", "AbortIncompleteMultipartUpload"}
    # Nothing live is ever aged out: shards CURRENT uses may be old.
    assert not any("age" in c and a == "Delete" for c, a in zip(conditions, actions))
    assert store["uniform_bucket_level_access"] is True
    assert resources(config, "google_artifact_registry_repository")["images"]["format"] == "DOCKER"


def grants(config) -> dict[str, set[tuple[str, str]]]:
    """Service account resource name -> {(role, on what)}."""
    out: dict[str, set[tuple[str, str]]] = {}
    for kind in ("google_storage_bucket_iam_member", "google_project_iam_member", "google_service_account_iam_member",
                 "google_artifact_registry_repository_iam_member"):  # fmt: skip
        for body in resources(config, kind).values():
            account = re.search(r"google_service_account\.([a-z_]+)\.email", body["member"])
            target = body.get("bucket") or body.get("service_account_id") or body.get("repository") or "project"
            key = account.group(1) if account else "workload_identity:" + body["member"]
            out.setdefault(key, set()).add((body["role"], re.sub(r"[${}]", "", target)))
    return out


def test_servers_only_read_and_workers_never_overwrite_or_delete_in_the_store(config):
    by_account = grants(config)
    assert by_account["server"] == {("roles/storage.objectViewer", "google_storage_bucket.store.name")}
    store_roles = {role for role, target in by_account["dataflow_worker"] if target == "google_storage_bucket.store.name"}
    assert store_roles == {"roles/storage.objectViewer", "roles/storage.objectCreator"}
    flows_store = {role for role, target in by_account["flows"] if target == "google_storage_bucket.store.name"}
    assert flows_store == {"roles/storage.objectUser"}  # publish, lease, gc: read, write and delete objects only
    everyone = {role for roles in by_account.values() for role, _ in roles}
    assert not everyone & {"roles/owner", "roles/editor", "roles/storage.admin", "roles/storage.objectAdmin"}
