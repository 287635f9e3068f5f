"""The shape of the code: no import cycles among kaizen's modules (imports inside functions included, since
they are imports all the same), steps that never reach up into the flows, and a CLI that answers `--help`
without the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers import REPO

PACKAGES = {"tasks": "kaizen.tasks", "flows": "kaizen.flows"}
HEAVY = ("torch", "transformers", "mlflow", "evidently", "prefect", "dvc", "sklearn", "pandas")


def import_graph() -> dict[str, set[str]]:
    """Module -> the kaizen modules it imports, from the source of tasks/ and flows/."""
    modules = {f"{package}.{path.stem}": path for folder, package in PACKAGES.items()
               for path in (REPO / folder).glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from its first module)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 20  # the walk found the modules
    assert cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_steps_never_import_the_flows() -> None:
    graph = import_graph()
    upward = {(m, t) for m, targets in graph.items() if m.startswith("kaizen.tasks.") for t in targets
              if t.startswith("kaizen.flows.")}
    assert upward == set()


def test_prediction_and_ingest_stand_apart_from_training_and_the_dvc_stage() -> None:
    graph = import_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert "kaizen.tasks.train" not in reach("kaizen.tasks.predict")
    assert "kaizen.tasks.preprocess" not in reach("kaizen.tasks.validate")
    assert "kaizen.tasks.preprocess" not in reach("kaizen.tasks.collect")


def test_help_imports_none_of_the_heavy_libraries() -> None:
    code = ("import sys; from typer.testing import CliRunner; from kaizen.flows.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
