"""What the code really has, read from the code itself: the deployment files are checked against it.

Server routes come from the FastAPI app's OpenAPI schema, environment variables from
``model.contracts.settings.Settings``, commands and flags from the ``retrofresh`` click group, console scripts
from the installed distributions, Dockerfile instructions from the Dockerfiles.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
ENV_PREFIX = "RETROFRESH_"


@lru_cache(maxsize=1)
def server_routes() -> dict[str, set[str]]:
    """``{path: {methods}}`` of the RETRO server app (building it loads no model)."""
    from model.contracts.settings import Settings
    from model.server.app import create_app

    paths = create_app(Settings()).openapi()["paths"]
    return {path: {m.upper() for m in ops} for path, ops in paths.items()}


def settings_env_names() -> set[str]:
    """Every ``RETROFRESH_*`` variable :class:`model.contracts.settings.Settings` reads."""
    from model.contracts.settings import Settings

    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def settings_default(name: str):
    from model.contracts.settings import Settings

    return Settings.model_fields[name].default


def console_scripts() -> set[str]:
    """Names of the console scripts installed in this environment (``retrofresh``, ``prefect``, ...)."""
    return {ep.name for ep in metadata.entry_points(group="console_scripts")}


def project_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml."""
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def retrofresh_problems(args: list[str]) -> list[str]:
    """What is wrong with ``retrofresh ARGS``: unknown subcommands or flags, per the click group.

    Values are not checked (a path that exists only in an image is fine), only that every
    ``--flag`` is one the command declares and that each subcommand exists.
    """
    from flows.cli import cli

    command: click.Command = cli
    ctx = click.Context(cli, info_name="retrofresh")
    words = list(args)
    problems = []
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.get_command(ctx, name)
        if sub is None:
            return [f"retrofresh has no command {' '.join(ctx.command_path.split()[1:] + [name])!r}"]
        ctx = click.Context(sub, info_name=name, parent=ctx)
        command = sub
    if isinstance(command, click.Group):
        return [f"{ctx.command_path} needs a subcommand, got {words}"]
    flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}
    takes_value = {opt for param in command.params if isinstance(param, click.Option) and not param.is_flag for opt in param.opts}
    i = 0
    while i < len(words):
        word = words[i]
        flag = word.split("=", 1)[0]
        if word.startswith("-"):
            if flag not in flags:
                problems.append(f"{ctx.command_path} has no option {flag} (it has {sorted(flags)})")
            elif flag in takes_value and "=" not in word:
                i += 1  # its value
        i += 1
    return problems


# Dockerfiles


@dataclass(frozen=True)
class Instruction:
    name: str  # upper-case: FROM, COPY, ENV, ENTRYPOINT, ...
    args: str  # the rest of the logical line

    def words(self) -> list[str]:
        """Exec form (a JSON list) or shell words."""
        text = self.args.strip()
        if text.startswith("["):
            return json.loads(text)
        return shlex.split(text)


def dockerfile(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        name, _, rest = logical.partition(" ")
        instructions.append(Instruction(name.upper(), rest.strip()))
    return instructions


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """Variables set by ENV (``ENV A=1 B=2`` form)."""
    env = {}
    for ins in instructions:
        if ins.name == "ENV":
            for word in shlex.split(ins.args):
                if "=" in word:
                    key, value = word.split("=", 1)
                    env[key] = value
    return env


def dockerfile_copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY/ADD from the build context (not ``--from=`` stages)."""
    copies = []
    for ins in instructions:
        if ins.name not in ("COPY", "ADD"):
            continue
        words = ins.words()
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        copies.append((words[:-1], words[-1]))
    return copies


def yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.y*ml"))


PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}")


def compose_value(text: str) -> str:
    """A compose string with ``${VAR:-default}`` replaced by its default (what runs with no .env)."""
    return PLACEHOLDER.sub(lambda m: m.group(3) or "", text)
