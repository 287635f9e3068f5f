"""`kaizen rollback` and `reproduce`: operate on the registered model versions and their training data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

app = typer.Typer()


@app.command()
def rollback(reason: Annotated[str, typer.Option("--reason", help="Why: recorded on the model versions.")],
             to: Annotated[str | None, typer.Option("--to", help="Version to restore (default: previous champion)")]
             = None,
             workspace: WorkspaceOpt = Path(".")) -> None:
    """Move the champion alias back (atomically) and record who, when and why."""
    from kaizen.tasks.operate.operations import OperationError
    from kaizen.tasks.operate.operations import rollback as roll_back

    ws = open_workspace(workspace)
    try:
        done = roll_back(ws, reason, to)
    except OperationError as exc:
        raise fail("cannot roll back:", exc) from exc
    console.print(f"champion: v{done.from_version} -> v{done.to_version} ({done.when}, {done.who}: {done.reason})")


@app.command()
def reproduce(version: Annotated[str, typer.Argument(help="Model version whose training data to restore.")],
              out: Annotated[Path | None, typer.Option(help="Folder to restore into.")] = None,
              remote: Annotated[str | None, typer.Option(help="DVC remote URL or folder (default: storage."
                                                         "dvc_remote)")] = None,
              workspace: WorkspaceOpt = Path(".")) -> None:
    """Restore a model version's exact training data from a DVC remote and verify its md5s."""
    from kaizen.tasks.operate.operations import OperationError
    from kaizen.tasks.operate.operations import reproduce as restore

    ws = open_workspace(workspace)
    try:
        with console.status(f"restoring the data of version {version} from the DVC remote"):
            prepared, md5 = restore(ws, version, out, remote)
    except OperationError as exc:
        raise fail("cannot reproduce:", exc) from exc
    console.print(f"version {version}: data {md5} restored into {prepared}; every file's md5 verified")
