"""The shape of the code: tasks/ in wings that import only downwards, in one fixed order; no import cycles
among kaizen's modules (imports inside functions and imports of whole packages included, since they are imports
all the same); steps that never reach up into the flows; and a CLI that answers `--help` without the heavy
libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.workspaces import REPO

PACKAGES = {"tasks": "kaizen.tasks", "flows": "kaizen.flows"}
# The wings of tasks/, lowest first: a module may import its own wing and the wings before it, never one after.
WINGS = ("workspace", "runtime", "formats", "ingest", "data", "model", "registry", "notify", "evaluation",
         "training", "serving", "operate")
HEAVY = ("torch", "transformers", "mlflow", "evidently", "prefect", "dvc", "sklearn", "pandas")


def module_name(path: Path) -> str:
    """The dotted name a file under tasks/ or flows/ installs as (a package by its __init__.py)."""
    folder = path.relative_to(REPO).parts
    parts = [PACKAGES[folder[0]], *folder[1:-1]] + ([] if path.stem == "__init__" else [path.stem])
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module or package -> the kaizen modules and packages it imports, from the source of tasks/ and flows/."""
    modules = {module_name(path): path for folder in PACKAGES for path in (REPO / folder).rglob("*.py")}
    known = set(modules) | {"kaizen"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if t in known else node.module for t in targets]  # a name from a module: the module
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in known and t != name}
    return graph


def wing_of(name: str) -> str | None:
    """The wing of a module or package under kaizen.tasks; None for the flows, kaizen.tasks and kaizen itself."""
    parts = name.split(".")
    return parts[2] if parts[:2] == ["kaizen", "tasks"] and len(parts) > 2 else None


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every import of tasks/ that goes up the order of the wings, out of the wings, or into the flows. The root
    package `kaizen` is below them all: it holds only the version and the templates."""
    found = set()
    for source, targets in graph.items():
        if not source.startswith("kaizen.tasks"):
            continue
        for target in targets - {"kaizen"}:
            low, high = wing_of(target), wing_of(source)
            if low is None or high is None or WINGS.index(low) > WINGS.index(high):
                found.add((source, target))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from its first module)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_of_tasks_lives_in_a_wing_of_the_order() -> None:
    graph = import_graph()
    steps = [name for name in graph if name.startswith("kaizen.tasks.")]
    assert len(steps) > 50  # the walk found the modules
    assert {wing_of(name) for name in steps} == set(WINGS)


def test_the_wings_import_only_downwards() -> None:
    graph = import_graph()
    assert sum(len(targets) for targets in graph.values()) > 150  # the walk found the imports
    assert upward_imports(graph) == set()


def test_an_upward_import_is_found_whatever_its_form() -> None:
    graph = {"kaizen.tasks.ingest.collect": {"kaizen.tasks.workspace.files", "kaizen.tasks.training.train"},
             "kaizen.tasks.registry.record": {"kaizen.flows"},  # `import kaizen.flows`: a package import
             "kaizen.tasks.workspace.files": {"kaizen.tasks.workspace"},
             "kaizen.tasks.data.stream": {"kaizen.tasks", "kaizen"}}
    assert upward_imports(graph) == {("kaizen.tasks.ingest.collect", "kaizen.tasks.training.train"),
                                     ("kaizen.tasks.registry.record", "kaizen.flows"),
                                     ("kaizen.tasks.data.stream", "kaizen.tasks")}


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_prediction_and_ingest_stand_apart_from_training_and_the_dvc_stage() -> None:
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), set()) - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert "kaizen.tasks.training.train" not in reach("kaizen.tasks.model.predict")
    assert "kaizen.tasks.data.preprocess" not in reach("kaizen.tasks.ingest.validate")
    assert "kaizen.tasks.data.preprocess" not in reach("kaizen.tasks.ingest.collect")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    code = ("import sys; from typer.testing import CliRunner; from kaizen.flows.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
