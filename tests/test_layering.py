"""The import direction of docs/ARCHITECTURE.md holds at run time: flows -> beam_jobs -> model."""

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """Top-level modules loaded by running one import statement in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement, forbidden",
    [
        ("import model.network.retro", {"faiss", "apache_beam", "prefect", "flows", "beam_jobs"}),
        ("import model.store", {"apache_beam", "prefect", "flows", "beam_jobs"}),
        ("import model.client", {"torch", "faiss", "apache_beam", "prefect"}),
        ("import flows.cli", {"torch", "faiss", "apache_beam", "prefect"}),
    ],
)
def test_import_does_not_pull_in(statement, forbidden):
    assert imported_after(statement).isdisjoint(forbidden), imported_after(statement) & forbidden
