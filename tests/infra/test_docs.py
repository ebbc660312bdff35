"""The deployment walkthroughs only use commands and flags that exist."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from tests.infra.facts import INFRA, REPO, retrofresh_problems

DOCS = [REPO / "docs" / "DEPLOY.md", INFRA / "README.md", INFRA / "dataflow" / "README.md", INFRA / "server" / "README.md"]


def shell_lines(path) -> list[str]:
    """The logical lines of a document's ```bash/sh blocks (continuations joined, comments and heredocs dropped)."""
    lines, block, pending, heredoc = [], False, "", None
    for raw in path.read_text().splitlines():
        if raw.strip().startswith("```"):
            block = raw.strip() in ("```bash", "```sh")
            continue
        if not block:
            continue
        if heredoc is not None:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        line = "" if raw.lstrip().startswith("#") else raw.split(" # ", 1)[0].rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        marker = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", logical)
        if marker:
            heredoc = marker.group(1)
        if logical:
            lines.append(logical)
    return lines


def retrofresh_calls(path) -> list[list[str]]:
    """The arguments of every ``retrofresh ...`` command in the document's shell blocks."""
    calls = []
    for line in shell_lines(path):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in (";", "&", "&&", "|", "||"):
                if command and command[0] == "retrofresh":
                    calls.append(command[1:])
                command = []
            else:
                command.append(word)
    return calls


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_retrofresh_command_in_the_docs_exists_with_its_flags(path):
    calls = retrofresh_calls(path)
    problems = [(call, retrofresh_problems(call)) for call in calls if retrofresh_problems(call)]
    assert not problems


def test_the_walkthrough_runs_the_refresh_serve_and_query_commands():
    used = {" ".join(c[:2]) if c[0] in ("index", "flows", "site") else c[0] for c in retrofresh_calls(REPO / "docs" / "DEPLOY.md")}
    assert {"refresh", "flows serve", "query", "train", "index status"} <= used


def test_the_deployment_the_docs_run_exists():
    deployments = yaml.safe_load((INFRA / "prefect" / "prefect.yaml").read_text())["deployments"]
    names = {f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for d in deployments}
    for path in DOCS:
        for run in re.findall(r"prefect deployment run ([\w/-]+)", path.read_text()):
            assert run in names, (path.name, run)


def test_a_wrong_flag_in_a_doc_is_caught(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("Run:\n\n   ```bash\n   retrofresh serve --checkpoint c \\\n       --workers 2 && retrofresh query x\n   ```\n")
    calls = retrofresh_calls(doc)
    assert calls == [["serve", "--checkpoint", "c", "--workers", "2"], ["query", "x"]]
    assert retrofresh_problems(calls[0]) and not retrofresh_problems(calls[1])
