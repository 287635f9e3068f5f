"""The commands that use the champion: `serve-model` (MLflow's model server) and `score` (batch scoring).
flows/cli.py registers them on its Typer app; thin like it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.console import WorkspaceOpt, console, fail, open_workspace


def serve_model(workspace: WorkspaceOpt = Path("."),
                port: Annotated[int | None, typer.Option(help="Default: serving.port")] = None,
                host: Annotated[str | None, typer.Option(help="Default: servers.host")] = None,
                version: Annotated[str | None, typer.Option(help="Serve this version, not the champion.")] = None,
                ) -> None:
    """Serve the champion over HTTP with `mlflow models serve` (POST /invocations, GET /ping)."""
    from mlflow.exceptions import MlflowException

    from kaizen.tasks import registry
    from kaizen.tasks.serving import serve_command

    ws = open_workspace(workspace)
    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    try:
        served = registry.model_version(client, name, version) if version else \
            registry.model_by_alias(client, name, registry.CHAMPION)
    except MlflowException as exc:
        raise fail("nothing to serve:", exc, 2) from exc
    if served is None:
        raise fail("nothing to serve:", ValueError("there is no champion yet: run the loop first"), 2)
    host, port = host or ws.settings.servers.host, port or ws.settings.serving.port
    command, env = serve_command(ws, port, host, version)
    console.print(f"serving {name} v{served.version} at http://{host}:{port}/invocations "
                  f"(`{' '.join(command[2:])}`); a later promotion is served after a restart")
    os.execve(command[0], command, env)  # the server replaces this process: signals reach it directly


def score(source: Annotated[str, typer.Argument(help="A CSV / JSON Lines / Parquet / text file, a folder of "
                                                     "them, or an fsspec URL.")],
          out: Annotated[str, typer.Option("--out", help="The Parquet file to write (a path or an fsspec URL).")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Label every text with the champion, in chunks, into Parquet: prediction, each class's probability, the
    model version, and a reason for each row or file that could not be labelled."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kaizen.tasks.scoring import ScoringError, score
    from kaizen.tasks.serving import ServingError

    ws = open_workspace(workspace)
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console) as bar:
            job = bar.add_task(f"scoring {source}", total=1.0, rows=0)
            result = score(ws, source, out, progress=lambda done, rows: bar.update(job, completed=done, rows=rows))
    except (ScoringError, ServingError) as exc:
        raise fail("cannot score:", exc, 2) from exc
    console.print(f"wrote {result.rows} rows to {result.out} (champion v{result.model_version}, {result.files} "
                  f"file(s), {result.seconds:.1f} s): {result.labelled} labelled, {result.with_reason} with a reason")
    for problem in result.problems:
        console.print(f"  [yellow]{problem}[/]")
