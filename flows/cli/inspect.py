"""`kaizen status`, `history` and `ui`: what the loop did and where it stands, read back, never changed; and
`watch-traffic`, which checks the served traffic for drift (a run of its own, that `status` reads back).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace, summary_table
from kaizen.flows.cli.servers import checked_servers, server_lines

app = typer.Typer()


@app.command()
def status(workspace: WorkspaceOpt = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """The champion, the previous champion, the batches ingested, the files waiting, the last watch of the
    traffic, and the servers."""
    from kaizen.tasks.operate import history
    from kaizen.tasks.serving.watch import last_watch

    ws = open_workspace(workspace)
    servers = checked_servers(ws, as_json)
    state = {**history.workspace_status(ws), "traffic": last_watch(ws), "servers": servers}
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
    console.print(traffic_line(state["traffic"]))
    for line in server_lines(servers):
        console.print(line)


def _utc(iso: str) -> str:
    return f"{datetime.fromisoformat(iso).astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def traffic_line(last: dict | None) -> str:
    """The last watch of the captured traffic (tasks/serving/watch.py's last_watch), in a line."""
    if last is None:
        return "traffic: not watched yet (`kaizen watch-traffic`, or the kaizen-watch deployment on watch.cron)"
    shown = last["verdict"] == "drift shown"
    verdict = f"[bold red]drift shown[/] ({', '.join(last['drifted_columns'])})" if shown else "drift not shown"
    notes = "".join(f"; {note}" for note in last["notes"])
    return (f"traffic: {last['answered']} captured since {_utc(last['since'])}, {verdict} at {_utc(last['at'])} "
            f"(run {last['run_id']}){notes}")


@app.command("watch-traffic")
def watch_traffic(workspace: WorkspaceOpt = Path("."),
                  since: Annotated[str | None, typer.Option(help="Check the texts answered since then: an age (12h, "
                                                            "7d) or an ISO date or time (UTC unless it names its "
                                                            "zone); default: since the last verdict, at most "
                                                            "watch.window_hours back.")] = None) -> None:
    """Check the traffic captured since the last watch for drift from the champion's data, once (the kaizen-watch
    deployment does it on watch.cron): a run of its own in MLflow, and an alert when drift is shown."""
    from kaizen.tasks.notify.alerts import announce_traffic
    from kaizen.tasks.serving import watch
    from kaizen.tasks.serving.selection import parse_since  # `kaizen select --since` reads it the same way

    ws = open_workspace(workspace)
    try:
        found = watch.watch_traffic(ws, since=parse_since(since, datetime.now(UTC)))
    except ValueError as exc:  # a bad --since, a captures folder holding something kaizen did not write
        raise fail("cannot watch the traffic:", exc, 2) from exc
    console.print(found.describe())
    if announce_traffic(ws, found) is None and found.drifted:
        console.print("not announced: no Prefect server (`kaizen up`, or PREFECT_API_URL)")


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
