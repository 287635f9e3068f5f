"""`kaizen select`: choose the captured texts most worth labeling and write them as a labeling queue
(tasks/serving/selection.py). flows/cli/__init__.py merges it into the `kaizen` command; thin like every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

app = typer.Typer()


@app.command()
def select(budget: Annotated[int, typer.Option("--budget", min=1, help="How many texts to queue for labeling.")],
           since: Annotated[str | None, typer.Option(help="Only texts answered since then: an age (12h, 7d) or an "
                                                          "ISO date or time (UTC unless it names its zone).")] = None,
           workspace: WorkspaceOpt = Path(".")) -> None:
    """Queue the captured texts most worth a label: those the model was least sure of, spread over what its training
    data covers least. Writes a CSV to fill in and land, and Label Studio tasks with their labeling config."""
    from datetime import UTC, datetime

    from kaizen.tasks.serving.champion import ServingError
    from kaizen.tasks.serving.picking import SelectionError
    from kaizen.tasks.serving.selection import parse_since, select_for_labeling
    from kaizen.tasks.workspace.files import Busy

    ws = open_workspace(workspace)
    try:
        start = parse_since(since, datetime.now(UTC))
        with console.status("choosing texts to label"):
            queue = select_for_labeling(ws, budget, since=start)
    except (ValueError, SelectionError, ServingError, Busy) as exc:
        raise fail("cannot select:", exc, 2) from exc
    for path in queue.files:
        console.print(f"wrote {path}")
    console.print(queue.describe())
