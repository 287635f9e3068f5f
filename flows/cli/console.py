"""The terminal side shared by every `kaizen` command: the console, the workspace option, opening a workspace,
the summary table and the way a command fails. Heavy libraries stay out of here, as out of the CLI.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from kaizen.tasks.workspace.layout import Workspace

# Piped output (CI logs, `| tee`) gets a width that fits the summary table instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 130)
WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", envvar="KAIZEN_WORKSPACE",
                                            help="The workspace folder (made by `kaizen init`).")]


def open_workspace(path: Path) -> Workspace:
    from kaizen.tasks.workspace.environment import apply_environment
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.repo import ensure_dvc
    from kaizen.tasks.workspace.settings import SettingsError

    try:
        ws = Workspace.open(path)
    except SettingsError as exc:
        console.print(f"[red]bad settings:[/] {exc}")
        raise typer.Exit(2) from exc
    if not (ws.root / ".dvc").exists() or not (ws.root / ".git").exists():
        ensure_dvc(ws.root, ws.dvc_remote)
    apply_environment(ws)
    return ws


def summary_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("batch", "accepted", "quarantined", "drift share", "champion", "challenger", "decision",
                   "challenger version", "champion version"):
        table.add_column(column, justify="left" if column in ("batch", "decision") else "right")
    from kaizen.tasks.registry.tags import Decision

    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    styles = {Decision.PROMOTED: "green", Decision.REJECTED: "red", Decision.SUSPECT: "yellow",
              Decision.FAILED: "bold red"}
    for r in rows:
        style = styles.get(r["decision"], "dim")
        table.add_row(r["batch"] or "–", str(r["rows_accepted"]), str(r["rows_quarantined"]), fmt(r["drift_share"]),
                      fmt(r["champion_score"]), fmt(r["challenger_score"]),
                      f"[{style}]{r['reasons'][0] if r['decision'] == Decision.LABELS else r['decision']}[/]",
                      r["challenger_version"] or "–", r["champion_version"] or "–")
    return table


def fail(message: str, exc: BaseException, code: int = 1) -> typer.Exit:
    """Print why a command cannot go on (the exception's own words) and give the exit to raise."""
    console.print(f"[red]{message}[/] {exc}")
    return typer.Exit(code)
