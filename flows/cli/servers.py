"""The production commands of `kaizen`: local servers (`up`, `down`), the deployment (`serve`, `deploy`) and
new data announcing itself (`watch`, `submit`). flows/cli/__init__.py merges them into the `kaizen` command; thin like every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

if TYPE_CHECKING:
    from kaizen.tasks.workspace.layout import Workspace

app = typer.Typer()


def server_lines(states: list[dict]) -> list[str]:
    lines = []
    for s in states:
        label = {"prefect": "Prefect", "mlflow": "MLflow"}[s["name"]]
        if s["url"] is None:
            lines.append(f"{label:8} embedded ({'a temporary local server per run' if s['name'] == 'prefect' else 'SQLite file'})")
            continue
        health = "[green]answers[/]" if s["answers"] else "[red]does not answer[/]"
        started = f", pid {s['pid']}, log {s['log']}" if s["pid"] else ""
        lines.append(f"{label:8} {s['url']}  {health}  ({s['source']}{started})")
    return lines


def checked_servers(ws: Workspace, as_json: bool) -> list[dict]:
    """Each server's state; when the tracking server does not answer, say so and exit 1 rather than let MLflow
    retry for minutes."""
    import json

    from kaizen.tasks.runtime import servers

    states = [s.as_dict() for s in servers.status(ws)]
    mlflow = next(s for s in states if s["name"] == "mlflow")
    if mlflow["url"] and not mlflow["answers"]:
        if as_json:
            typer.echo(json.dumps({"workspace": str(ws.root), "servers": states,
                                   "error": f"MLflow server {mlflow['url']} does not answer"}, indent=2))
        else:
            for line in server_lines(states):
                console.print(line)
            console.print("[red]the MLflow server does not answer:[/] `kaizen up` starts it again, `kaizen down` "
                          "forgets it (the loop then uses the SQLite store directly)")
        raise typer.Exit(1)
    return states


@app.command()
def up(workspace: WorkspaceOpt = Path(".")) -> None:
    """Start a Prefect server and an MLflow tracking server for the workspace (127.0.0.1, SQLite)."""
    from kaizen.tasks.runtime import servers

    ws = open_workspace(workspace)
    try:
        with console.status("starting the Prefect and MLflow servers (about 20 s each on a fresh database)"):
            states = servers.start(ws)
    except servers.ServerError as exc:
        raise fail("kaizen up failed:", exc) from exc
    for line in server_lines([s.as_dict() for s in states]):
        console.print(line)
    prefect, mlflow = states
    console.print(f"Prefect UI: {prefect.url}   MLflow UI: {mlflow.url}\n"
                  f"kaizen commands in {ws.root} use them; for other tools (`prefect worker start`):\n"
                  f"  export PREFECT_API_URL={prefect.url}/api MLFLOW_TRACKING_URI={mlflow.url}")


@app.command()
def down(workspace: WorkspaceOpt = Path(".")) -> None:
    """Stop the servers `kaizen up` started for the workspace (only those)."""
    from kaizen.tasks.runtime import servers

    ws = open_workspace(workspace)
    for name, what in servers.stop(ws).items():
        console.print(f"{name}: {what}")


def _require_server(ws: Workspace) -> None:
    if not ws.prefect_api_url:
        console.print("[red]no Prefect server:[/] start one with `kaizen up` (or set PREFECT_API_URL)")
        raise typer.Exit(2)


def alert_lines(names: list[str]) -> str:
    if not names:
        return "alerts: off (alerts.webhook_url is empty)"
    return f"alerts: {len(names)} Prefect automations send the loop's events to alerts.webhook_url"


@app.command()
def serve(workspace: WorkspaceOpt = Path(".")) -> None:
    """Serve the loop's deployment from this process: the cron of params.yaml, a run per data-arrival event,
    one run at a time; and the batch-scoring, traffic-watch and labeling-queue deployments. Ctrl-C stops serving
    (and pauses them)."""
    ws = open_workspace(workspace)
    _require_server(ws)
    from kaizen.flows.deployment import (
        FLOW_NAME,
        SCORING_FLOW_NAME,
        SELECT_FLOW_NAME,
        WATCH_FLOW_NAME,
        deployment_name,
        serve,
    )
    from kaizen.tasks.notify.alerts import AlertsError
    from kaizen.tasks.notify.events import ARRIVED
    from kaizen.tasks.workspace.files import Busy

    console.print(f"serving {FLOW_NAME}/{deployment_name(ws)} on {ws.prefect_api_url}: cron "
                  f"'{ws.settings.schedule.cron}', and a run per {ARRIVED} event for this workspace; "
                  f"and {SCORING_FLOW_NAME}/{deployment_name(ws)} (batch scoring, on demand), and "
                  f"{WATCH_FLOW_NAME}/{deployment_name(ws)} (drift of the captured traffic, cron "
                  f"'{ws.settings.watch.cron}'), and {SELECT_FLOW_NAME}/{deployment_name(ws)} (a labeling queue, on "
                  "demand)")
    try:
        serve(ws, on_alerts=lambda names: console.print(alert_lines(names)))
    except Busy as exc:
        raise fail("already served:", exc, 2) from exc
    except AlertsError as exc:
        raise fail("cannot serve:", exc, 2) from exc


@app.command()
def deploy(pool: Annotated[str, typer.Option("--pool", help="Work pool (created as a process pool if missing).")],
           workspace: WorkspaceOpt = Path(".")) -> None:
    """Register the loop's deployment on a work pool; a worker (`prefect worker start --pool POOL`) runs it."""
    ws = open_workspace(workspace)
    _require_server(ws)
    from kaizen.flows.deployment import FLOW_NAME, SCORING_FLOW_NAME, deploy, deployment_name
    from kaizen.tasks.notify.alerts import AlertsError

    try:
        deployment_id, names = deploy(ws, pool)
    except AlertsError as exc:
        raise fail("cannot deploy:", exc, 2) from exc
    console.print(f"deployment {FLOW_NAME}/{deployment_name(ws)} ({deployment_id}) and {SCORING_FLOW_NAME}/"
                  f"{deployment_name(ws)} on pool {pool}; {alert_lines(names)}; start a worker:\n"
                  f"  PREFECT_API_URL={ws.prefect_api_url} prefect worker start --pool {pool}")
    if ws.shared:
        console.print("any machine with kaizen installed can be a worker, on an empty disk: give it the stores' "
                      "credentials (PGPASSWORD, AWS_* or GOOGLE_*) and, to keep a cache between runs, KAIZEN_HOME=DIR")


@app.command()
def watch(workspace: WorkspaceOpt = Path("."),
          once: Annotated[bool, typer.Option("--once", help="Look once, then exit.")] = False) -> None:
    """Watch the landing zone (polling) and announce each new file with a kaizen.data.arrived event."""
    from kaizen.tasks.notify import arrivals

    ws = open_workspace(workspace)
    _require_server(ws)
    if not once:
        console.print(f"watching {ws.landing_shown} every {ws.settings.schedule.poll_seconds} s (Ctrl-C stops)")
    arrivals.watch(ws, lambda names: console.print(f"announced {', '.join(names)}"), once=once)


@app.command()
def submit(files: Annotated[list[Path], typer.Argument(help="Labeled files (CSV, JSON Lines, Parquet).")],
           workspace: WorkspaceOpt = Path(".")) -> None:
    """Copy files into the landing zone and announce them (one kaizen.data.arrived event)."""
    from kaizen.tasks.notify import arrivals

    ws = open_workspace(workspace)
    _require_server(ws)
    try:
        names = arrivals.submit(ws, files)
    except (FileNotFoundError, FileExistsError) as exc:
        raise fail("nothing submitted:", exc, 2) from exc
    console.print(f"landed and announced {', '.join(names)} in {ws.landing_shown}")
