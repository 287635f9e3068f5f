"""`kaizen status`, `history` and `ui`: what the loop did and where it stands, read back, never changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, open_workspace, summary_table
from kaizen.flows.cli.servers import checked_servers, server_lines

app = typer.Typer()


@app.command()
def status(workspace: WorkspaceOpt = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """The champion, the previous champion, the batches ingested, the files waiting, and the servers."""
    from kaizen.tasks.operate import history

    ws = open_workspace(workspace)
    servers = checked_servers(ws, as_json)
    state = {**history.workspace_status(ws), "servers": servers}
    if as_json:
        typer.echo(json.dumps(state, indent=2))
        return
    champion = state["champion"]
    console.print(f"workspace: {ws.root}")
    console.print(f"champion: {'none yet' if not champion else 'v' + champion['version']} "
                  f"{'' if not champion else '(parent v' + (champion['parent_version'] or '–') + ', data ' + champion['data_version'][:12] + ')'}")
    console.print(f"previous champion: {state['previous_champion']['version'] if state['previous_champion'] else '–'}")
    console.print(f"batches: {len(state['batches'])}; files waiting: {len(state['landing'])}; "
                  f"rows staged: {state['staged_rows']}")
    for batch in state["batches"]:
        if batch["trust"] != "trusted":
            console.print(f"  [yellow]{batch['batch']} suspect[/] ({batch['trust_by']}): {batch['trust_reason']}")
    for failed in state["failed"]:
        console.print(f"[bold red]{failed['batch']} failed[/] {failed['attempts']} times in a row: {failed['error']}; "
                      f"set aside, the loop goes on without it (fix it, then `kaizen batch retry {failed['batch']}`)")
    for line in server_lines(servers):
        console.print(line)


@app.command()
def ui(workspace: WorkspaceOpt = Path("."),
       port: Annotated[int | None, typer.Option(help="Default: servers.mlflow_port")] = None) -> None:
    """Serve the MLflow UI on the workspace's tracking store (127.0.0.1)."""
    from kaizen.tasks.runtime.servers import ui_command

    ws = open_workspace(workspace)
    if ws.tracking_uri.startswith(("http://", "https://")):  # a tracking server already serves it
        console.print(f"MLflow UI: {ws.mlflow_ui_url}")
        return
    command, env = ui_command(ws, port)  # as lean as `kaizen up`'s MLflow server
    os.execve(command[0], command, env)


@app.command("history")
def history_command(workspace: WorkspaceOpt = Path("."),
                    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False) -> None:
    """Every iteration: batch, scores, decision, versions."""
    from kaizen.tasks.operate import history

    ws = open_workspace(workspace)
    rows = [s.as_dict() for s in history.history(ws)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    console.print(summary_table(rows, f"kaizen history: {ws.root}"))
