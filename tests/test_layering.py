"""The import direction of docs/ARCHITECTURE.md holds: flows -> beam_jobs -> model, and inside
model/ each layer imports only from the layers below it, with no import circle anywhere in it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = Path(__file__).resolve().parents[1] / "model"

# model/'s layers, bottom first (docs/ARCHITECTURE.md, "Layers of model/"): a module may import
# from its own layer and the ones before it, never from one after it.
LAYERS = [
    ("model.contracts", "model.waiting"),
    ("model.store",),
    ("model.network",),
    ("model.training",),
    ("model.evaluation",),
    ("model.server",),
    ("model.client",),
    ("model.commands",),
]


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


def model_modules() -> dict[str, Path]:
    """Every module of model/ by dotted name (a package by its own name)."""
    found = {}
    for path in MODEL.rglob("*.py"):
        parts = path.relative_to(MODEL.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Which model modules each model module imports, anywhere in it: at the top, inside a
    function (a lazy import is still an arrow) or under ``TYPE_CHECKING`` (so is a type's)."""
    modules = model_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    # `from model.store import layout` imports the submodule; `from model.store
                    # import Store` the package's own name.
                    submodule = f"{base}.{alias.name}"
                    targets.add(submodule if submodule in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> int:
    for number, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    raise AssertionError(f"{module} is in no layer of model/: add it to LAYERS here and to docs/ARCHITECTURE.md")


def test_every_model_module_has_a_layer():
    loose = [m for m in model_modules() if m != "model" and not any(m == p or m.startswith(p + ".") for layer in LAYERS for p in layer)]
    assert not loose, f"{loose} belong to no layer of model/"


def test_model_layers_import_only_downward():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if source != "model"
        for target in targets
        if target != "model" and layer_of(target) > layer_of(source)
    )
    assert not upward, "imports against the layer order of model/:\n" + "\n".join(upward)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_circles_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_model_has_no_import_circle():
    # A package's __init__ re-exporting its modules is not a circle; a module that imports the
    # package's re-exported names back would be.
    graph = import_graph()
    assert circles(graph) == []


# flows/: a helper with one user lives beside it (a module named `_*.py`, docs/ARCHITECTURE.md,
# "Flows"); flows/common/ holds only what several product modules share.

ROOT = MODEL.parent
PRODUCT = ("flows", "beam_jobs", "model", "bench")


def users_of(module: str) -> set[str]:
    """Product modules that import ``module`` (as ``import m``, ``from m import x`` or ``from package import m``)."""
    package, _, leaf = module.rpartition(".")
    users = set()
    for top in PRODUCT:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import) and any(alias.name == module for alias in node.names):
                    users.add(name)
                elif isinstance(node, ast.ImportFrom) and (
                        node.module == module or (node.module == package and any(alias.name == leaf for alias in node.names))):
                    users.add(name)
    return users - {module}


def test_flows_common_holds_only_shared_modules():
    lonely = {}
    for path in sorted((ROOT / "flows" / "common").glob("*.py")):
        if path.stem != "__init__" and len(users := users_of(f"flows.common.{path.stem}")) < 2:
            lonely[path.stem] = sorted(users)
    assert not lonely, f"flows/common/ modules with fewer than two users (move each beside its user as a `_` module): {lonely}"


@pytest.mark.parametrize("folder", ["flows", "flows/tasks"])
def test_private_flow_modules_serve_one_module_beside_them(folder):
    for path in sorted((ROOT / folder).glob("_*.py")):
        if path.stem == "__init__":
            continue
        users = users_of(f"{folder.replace('/', '.')}.{path.stem}")
        assert len(users) == 1 and next(iter(users)).rpartition(".")[0] == folder.replace("/", "."), (path, users)
