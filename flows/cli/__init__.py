"""The `kaizen` command. Thin: each command opens the workspace, calls a flow or a step, and prints what came back.

One module per command group, each a Typer app of its own that this package merges into one (`kaizen batch`
keeps its own name): loop (init, run, feed, demo), inspect (status, history, ui, watch-traffic), models (rollback,
reproduce), serving (predict, serve-model, score), labeling (select), servers (up, down, serve, deploy, watch,
submit), batches (batch ...).
Heavy libraries (torch, transformers, mlflow, prefect, evidently) are imported inside the commands, so
`kaizen --help` answers at once.
"""

from __future__ import annotations

import typer

from kaizen.flows.cli import batches, inspect, labeling, loop, models, servers, serving

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="kaizen: keep a text classifier improving as labeled data arrives, without regressions.")
for group in (loop, inspect, models, serving, labeling, servers, batches):
    app.add_typer(group.app)
