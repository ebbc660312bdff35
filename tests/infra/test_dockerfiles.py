"""The images: every path a Dockerfile copies exists, every entrypoint it names is real, versions match."""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata
from pathlib import PurePosixPath

import pytest

from tests.infra.facts import (
    INFRA,
    REPO,
    dockerfile,
    dockerfile_copies,
    dockerfile_env,
    project_scripts,
    retrofresh_problems,
    server_routes,
    settings_env_names,
)

DOCKERFILES = sorted(INFRA.glob("*/Dockerfile"))


def test_there_are_the_two_images():
    assert {p.parent.name for p in DOCKERFILES} >= {"server", "dataflow"}


def copy_problems(path) -> list[str]:
    """Sources a Dockerfile copies that the build context (the repository root) lacks."""
    return [source for sources, _ in dockerfile_copies(dockerfile(path)) for source in sources if not (REPO / source).exists()]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_copied_path_exists(path):
    assert dockerfile_copies(dockerfile(path)), "copies nothing from the repository?"
    assert copy_problems(path) == []


def test_a_missing_copy_source_is_caught(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM python:3.11-slim\nCOPY pyproject.toml \\\n     no_such_dir ./\n")
    assert copy_problems(broken) == ["no_such_dir"]


def entrypoint(path) -> list[str]:
    return [i for i in dockerfile(path) if i.name == "ENTRYPOINT"][-1].words()


def test_the_server_image_runs_retrofresh_serve_with_settings_it_has():
    path = INFRA / "server" / "Dockerfile"
    argv = entrypoint(path)
    assert argv[0] in project_scripts() and retrofresh_problems(argv[1:]) == [] and argv[1:] == ["serve"]
    env = dockerfile_env(dockerfile(path))
    assert {k for k in env if k.startswith("RETROFRESH_")} <= settings_env_names()
    exposed = [i.args for i in dockerfile(path) if i.name == "EXPOSE"]
    assert exposed == [env["RETROFRESH_PORT"]]
    # The image's own health check asks the liveness route.
    healthcheck = next(i.args for i in dockerfile(path) if i.name == "HEALTHCHECK")
    paths = re.findall(r"/(?:healthz|readyz|[a-z]+/[a-z]+)\b", healthcheck)
    assert paths == ["/healthz"] and "/healthz" in server_routes()


def test_the_dataflow_image_is_beams_sdk_image_at_the_projects_beam_version():
    import tomllib

    instructions = dockerfile(INFRA / "dataflow" / "Dockerfile")
    arg = next(i.args for i in instructions if i.name == "ARG" and i.args.startswith("BEAM_VERSION="))
    image_version = arg.split("=", 1)[1]
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d for d in deps if re.match(r"apache-beam(\[.*\])?==", d)]
    assert pinned, "pyproject.toml must pin apache-beam exactly: the worker image has to match the launcher"
    assert pinned[0].split("==")[1] == image_version == metadata.version("apache-beam")
    stages = [i.words() for i in instructions if i.name == "FROM"]
    assert stages[-1] == ["apache/beam_python3.11_sdk:${BEAM_VERSION}"]
    # Its entrypoint is the SDK harness of that base image; it is not in this repository.
    assert entrypoint(INFRA / "dataflow" / "Dockerfile") == ["/opt/apache/beam/boot"]


def test_the_flex_template_launcher_runs_a_file_the_image_copies():
    instructions = dockerfile(INFRA / "dataflow" / "Dockerfile")
    env = dockerfile_env(instructions)
    workdir = PurePosixPath(next(i.args for i in instructions if i.name == "WORKDIR"))
    launched = PurePosixPath(env["FLEX_TEMPLATE_PYTHON_PY_FILE"])
    copied = {workdir / dest if not dest.startswith("/") else PurePosixPath(dest): sources for sources, dest in dockerfile_copies(instructions)}
    assert [str(s) for s in copied[launched]] == ["infra/dataflow/flex_main.py"] and (REPO / copied[launched][0]).is_file()
    compile((REPO / "infra/dataflow/flex_main.py").read_text(), "flex_main.py", "exec")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_the_makefiles_torch_and_import_what_exists(path):
    makefile_torch = re.search(r"torch==[0-9.]+", (REPO / "Makefile").read_text()).group(0)
    text = path.read_text()
    assert re.findall(r"torch==[0-9.]+", text) == [makefile_torch]
    for check in re.findall(r'python -c "import ([^;"]+)', text):
        for module in check.split(","):
            assert importlib.util.find_spec(module.strip()) is not None, module
