"""infra/compose.yaml: it parses, and every command, flag, variable, port and route it uses is real."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from tests.infra.facts import INFRA, REPO, compose_value, console_scripts, dockerfile, retrofresh_problems, server_routes, settings_env_names

COMPOSE = INFRA / "compose.yaml"
REPLICAS = ("retro-1", "retro-2")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def image_entrypoint() -> list[str]:
    return [i for i in dockerfile(INFRA / "server" / "Dockerfile") if i.name == "ENTRYPOINT"][-1].words()


def argv_of(service: dict) -> list[str]:
    entry = service.get("entrypoint", image_entrypoint())
    return [compose_value(w) for w in [*entry, *service.get("command", [])]]


def volume(spec: str) -> tuple[str, str]:
    """``(host path, container path)`` of a ``HOST:CONTAINER[:ro]`` volume, defaults filled in."""
    host, container = compose_value(spec).split(":")[:2]
    return host, container


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_stack_has_its_parts(services):
    assert set(services) == {"gcs", "store-init", "site", "prefect", "flows", *REPLICAS}


def test_every_command_is_one_the_project_or_its_tools_have(services):
    for name, service in services.items():
        if name == "gcs":
            continue  # the emulator's own image
        argv = argv_of(service)
        if argv[0] == "python":
            assert argv[1] == "-c"
            compile(argv[2], f"{name} command", "exec")
        else:
            assert argv[0] in console_scripts(), (name, argv)
        if argv[0] == "retrofresh":
            assert retrofresh_problems(argv[1:]) == [], name


def test_retrofresh_variables_are_settings_the_code_reads(services):
    for name, service in services.items():
        env = service.get("environment", {})
        unknown = {k for k in env if k.startswith("RETROFRESH_")} - settings_env_names()
        assert not unknown, (name, unknown)


def test_replicas_serve_a_port_their_probe_and_the_refresh_use(services):
    flows_env = services["flows"]["environment"]
    notified = json.loads(flows_env["RETROFRESH_SERVERS"])
    assert [urlparse(u).hostname for u in notified] == list(REPLICAS)
    for name, url in zip(REPLICAS, notified):
        replica = services[name]
        argv = argv_of(replica)
        assert argv[:2] == ["retrofresh", "serve"]
        port = flag(argv, "--port")
        assert urlparse(url).port == int(port)
        assert [p.split(":")[1] for p in replica["ports"]] == [port]
        probe = replica["healthcheck"]["test"]
        assert f"http://127.0.0.1:{port}/readyz" in probe[-1] and "/readyz" in server_routes()
        mounts = {PurePosixPath(volume(v)[1]) for v in replica["volumes"]}
        assert PurePosixPath(replica["environment"].get("RETROFRESH_CHECKPOINT", "/checkpoint")) in mounts


def test_the_store_is_the_emulators_bucket_that_store_init_creates(services):
    gcs_port = flag(services["gcs"]["command"], "-port")
    for name, service in services.items():
        env = service.get("environment", {})
        if "RETROFRESH_STORE" in env:
            assert urlparse(env["STORAGE_EMULATOR_HOST"]) == urlparse(f"http://gcs:{gcs_port}"), name
            bucket = urlparse(env["RETROFRESH_STORE"]).hostname
            assert f"create_bucket('{bucket}')" in argv_of(services["store-init"])[2]


def test_the_flows_service_reads_files_that_exist_where_it_looks(services):
    flows = services["flows"]
    mounts = {volume(v)[1]: (INFRA / volume(v)[0]).resolve() for v in flows["volumes"]}
    argv = argv_of(flows)
    assert argv[:3] == ["retrofresh", "flows", "serve"]
    assert mounts[flag(argv, "--config")] == REPO / "infra/prefect/prefect.yaml"
    sources = mounts[flows["environment"]["RETROFRESH_SOURCES"]]
    from beam_jobs.sources import load_sources

    start = urlparse(load_sources(sources).sources[0].start_urls[0])
    site = argv_of(services["site"])
    assert site[:3] == ["retrofresh", "site", "serve"] and (start.hostname, start.port) == ("site", int(flag(site, "--port")))
    api = urlparse(flows["environment"]["PREFECT_API_URL"])
    assert (api.hostname, api.port, api.path) == ("prefect", int(flag(argv_of(services["prefect"]), "--port")), "/api")


def test_the_default_checkpoint_is_the_demos_shipped_model(services):
    from flows.demo import SHIPPED_CHECKPOINT

    source = (INFRA / volume(services[REPLICAS[0]]["volumes"][0])[0]).resolve()
    assert source == SHIPPED_CHECKPOINT.resolve() and (source / "config.json").is_file()


def test_a_flag_serve_does_not_have_is_caught():
    assert retrofresh_problems(["serve", "--port", "8000", "--workers", "4"]) and retrofresh_problems(["serv"])
