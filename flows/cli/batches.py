"""`kaizen batch ...`: what an operator does with one batch, recorded with who, when and why. Thin, like
every command.

`retry` puts back a batch the loop set aside after it failed again and again with the same error
(tasks/operate/failures.py), once its cause is fixed; `trust` and `distrust` overrule the loop's label check
(tasks/evaluation/screening.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

app = typer.Typer(name="batch", no_args_is_help=True, help="Operate on one batch: retry a failed one, overrule the label "
                                                   "check (trust, distrust).")
Batch = Annotated[str, typer.Argument(help="The batch, e.g. batch-0005 (see `kaizen status`).")]
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded in the ledger with who and when.")]


@app.command()
def retry(batch: Batch, workspace: WorkspaceOpt = Path(".")) -> None:
    """Put a failed batch back in line: the next run learns from it (oldest pending first)."""
    from kaizen.tasks.operate.failures import BatchError
    from kaizen.tasks.operate.failures import retry as put_back

    ws = open_workspace(workspace)
    try:
        put_back(ws, batch)
    except BatchError as exc:
        raise fail("cannot retry:", exc, 2) from exc
    console.print(f"{batch} is pending again; `kaizen run` (or the deployment's next run) learns from it")


def _set_trust(batch: str, trusted: bool, reason: str, workspace: Path) -> None:
    from kaizen.tasks.operate.operations import OperationError, set_batch_trust

    ws = open_workspace(workspace)
    try:
        done = set_batch_trust(ws, batch, trusted, reason)
    except OperationError as exc:
        raise fail(f"cannot {'trust' if trusted else 'distrust'} {batch}:", exc) from exc
    console.print(f"{done.batch_id}: {done.trust}; {done.note}")


@app.command()
def trust(batch: Batch, reason: Reason, workspace: WorkspaceOpt = Path(".")) -> None:
    """Trust a batch's labels: a suspect batch is learned from at the next run."""
    _set_trust(batch, True, reason, workspace)


@app.command()
def distrust(batch: Batch, reason: Reason, workspace: WorkspaceOpt = Path(".")) -> None:
    """Distrust a batch's labels: never trained on, never replayed, no yardstick for a gate."""
    _set_trust(batch, False, reason, workspace)
