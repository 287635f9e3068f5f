"""`kaizen batch ...`: an operator's word on a batch, recorded with who, when and why. flows/cli.py registers
the group; thin like every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.console import WorkspaceOpt, console, fail, open_workspace

batch_app = typer.Typer(no_args_is_help=True, help="Overrule the loop on one batch (trust, distrust).")
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded in the ledger with who and when.")]


def _set_trust(batch: str, trusted: bool, reason: str, workspace: Path) -> None:
    from kaizen.tasks.operations import OperationError, set_batch_trust

    ws = open_workspace(workspace)
    try:
        done = set_batch_trust(ws, batch, trusted, reason)
    except OperationError as exc:
        raise fail(f"cannot {'trust' if trusted else 'distrust'} {batch}:", exc) from exc
    console.print(f"{done.batch_id}: {done.trust}; {done.note}")


@batch_app.command()
def trust(batch: Annotated[str, typer.Argument(help="The batch, e.g. batch-0005.")], reason: Reason,
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Trust a batch's labels: a suspect batch is learned from at the next run."""
    _set_trust(batch, True, reason, workspace)


@batch_app.command()
def distrust(batch: Annotated[str, typer.Argument(help="The batch, e.g. batch-0005.")], reason: Reason,
             workspace: WorkspaceOpt = Path(".")) -> None:
    """Distrust a batch's labels: never trained on, never replayed, no yardstick for a gate."""
    _set_trust(batch, False, reason, workspace)
