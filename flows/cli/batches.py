"""`kaizen batch ...`: what an operator does with one batch, recorded with who, when and why. Thin, like
every command.

`retry` puts back a batch the loop set aside after it failed again and again with the same error
(tasks/operate/failures.py), once its cause is fixed; `trust` and `distrust` overrule the loop's label check
(tasks/evaluation/screening.py). Each waits for a running iteration to end (`--wait` seconds), then gives up.
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
# The default repeats tasks/operate/operations.py's BATCH_WAIT_SECONDS: importing it would load the tasks for --help.
Wait = Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for a running iteration to end before "
                                                        "giving up; 0: give up at once.")]


@app.command()
def retry(batch: Batch, workspace: WorkspaceOpt = Path("."), wait: Wait = 30.0) -> None:
    """Put a failed batch back in line: the next run learns from it (oldest pending first)."""
    from kaizen.tasks.operate.failures import BatchError
    from kaizen.tasks.operate.failures import retry as put_back
    from kaizen.tasks.workspace.files import Busy

    ws = open_workspace(workspace)
    try:
        put_back(ws, batch, wait)
    except BatchError as exc:
        raise fail("cannot retry:", exc, 2) from exc
    except Busy as exc:
        raise fail(f"cannot retry {batch} now:", exc) from exc
    console.print(f"{batch} is pending again; `kaizen run` (or the deployment's next run) learns from it")


def _set_trust(batch: str, trusted: bool, reason: str, workspace: Path, wait: float) -> None:
    from kaizen.tasks.operate.operations import OperationError, set_batch_trust
    from kaizen.tasks.workspace.files import Busy

    ws = open_workspace(workspace)
    try:
        done = set_batch_trust(ws, batch, trusted, reason, wait)
    except (OperationError, Busy) as exc:
        raise fail(f"cannot {'trust' if trusted else 'distrust'} {batch}:", exc) from exc
    console.print(f"{done.batch_id}: {done.trust}; {done.note}")


@app.command()
def trust(batch: Batch, reason: Reason, workspace: WorkspaceOpt = Path("."), wait: Wait = 30.0) -> None:
    """Trust a batch's labels: a suspect batch is learned from at the next run."""
    _set_trust(batch, True, reason, workspace, wait)


@app.command()
def distrust(batch: Batch, reason: Reason, workspace: WorkspaceOpt = Path("."), wait: Wait = 30.0) -> None:
    """Distrust a batch's labels: never trained on, never replayed, no yardstick for a gate."""
    _set_trust(batch, False, reason, workspace, wait)
