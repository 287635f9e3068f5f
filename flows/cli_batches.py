"""`kaizen batch ...`: what an operator does with one batch. Thin, like flows/cli.py, which registers the group.

`retry` puts back a batch the loop set aside after it failed again and again with the same error
(tasks/failures.py), once its cause is fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.console import WorkspaceOpt, console, fail, open_workspace

batch_app = typer.Typer(no_args_is_help=True, help="Operate on one batch: retry one set aside as failed.")


@batch_app.command()
def retry(batch: Annotated[str, typer.Argument(help="The failed batch, e.g. batch-0003 (see `kaizen status`).")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Put a failed batch back in line: the next run learns from it (oldest pending first)."""
    from kaizen.tasks.failures import BatchError
    from kaizen.tasks.failures import retry as put_back

    ws = open_workspace(workspace)
    try:
        put_back(ws, batch)
    except BatchError as exc:
        raise fail("cannot retry:", exc, 2) from exc
    console.print(f"{batch} is pending again; `kaizen run` (or the deployment's next run) learns from it")
