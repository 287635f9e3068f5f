"""The commands that use the champion: `serve-model` (MLflow's scoring server), `score` (batch scoring) and
`predict` (a text, or a file through the same batch scorer). flows/cli/__init__.py merges them into the `kaizen`
command; thin like every command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

if TYPE_CHECKING:
    from kaizen.tasks.workspace.layout import Workspace

app = typer.Typer()


@app.command()
def serve_model(workspace: WorkspaceOpt = Path("."),
                port: Annotated[int | None, typer.Option(help="Default: serving.port")] = None,
                host: Annotated[str | None, typer.Option(help="Default: servers.host")] = None,
                version: Annotated[str | None, typer.Option(help="Serve this version, not the champion.")] = None,
                ) -> None:
    """Serve the champion over HTTP with MLflow's scoring server (POST /invocations, GET /ping), recording what it
    answers (params.yaml `capture`). Off loopback it needs MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, as
    `kaizen up` does; with them set, every caller must send them (HTTP basic auth)."""
    from mlflow.exceptions import MlflowException

    from kaizen.tasks.registry import tracking
    from kaizen.tasks.runtime.security import MLFLOW_PASSWORD, MLFLOW_USER, Unprotected
    from kaizen.tasks.serving.champion import ServingError, serve_command
    from kaizen.tasks.workspace.redact import redact

    ws = open_workspace(workspace)
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    try:
        served = tracking.model_version(client, name, version) if version else \
            tracking.model_by_alias(client, name, tracking.CHAMPION)
    except MlflowException as exc:
        raise fail("nothing to serve:", exc, 2) from exc
    if served is None:
        raise fail("nothing to serve:", ValueError("there is no champion yet: run the loop first"), 2)
    host, port = host or ws.settings.servers.host, port or ws.settings.serving.port
    try:
        command, env = serve_command(ws, port, host, served.version)
    except (Unprotected, ServingError) as exc:
        raise fail("cannot serve:", exc, 2) from exc
    guard = f" behind basic auth ({MLFLOW_USER} / {MLFLOW_PASSWORD})" if env.get(MLFLOW_USER) and \
        env.get(MLFLOW_PASSWORD) else ""
    kept = ws.settings.capture
    captured = (f"recording {kept.sample_rate:.0%} of the texts answered{'' if kept.keep_text else ' (hashes only)'} "
                f"in {redact(ws.captures)}") if kept.enabled else "recording nothing (capture.enabled: false)"
    console.print(f"serving {name} v{served.version} at http://{host}:{port}/invocations{guard}, {captured} "
                  f"(`{' '.join(command[2:])}`); a later promotion is served after a restart")
    os.execve(command[0], command, env)  # the server replaces this process: signals reach it directly


def _score_with_bar(ws: Workspace, source: str, out: str, classifier=None, capture: bool = True):
    """tasks/serving/scoring.py's `score`, with a progress bar: under `kaizen score` and `kaizen predict FILE`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kaizen.tasks.serving.scoring import score

    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[rows]} rows"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        job = bar.add_task(f"scoring {source}", total=1.0, rows=0)
        return score(ws, source, out, progress=lambda done, rows: bar.update(job, completed=done, rows=rows),
                     classifier=classifier, capture=capture)


@app.command()
def score(source: Annotated[str, typer.Argument(help="A CSV / JSON Lines / Parquet / text file (maybe compressed: "
                                                     ".gz, .bz2, .xz, .zip), a folder of them, or an fsspec URL.")],
          out: Annotated[str, typer.Option("--out", help="The Parquet (or .csv) file to write (a path or an fsspec "
                                                         "URL).")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Label every text with the champion, in chunks, into Parquet (or CSV): prediction, each class's probability, the
    model version, and a reason for each row or file that could not be labelled."""
    from kaizen.tasks.serving.champion import ServingError
    from kaizen.tasks.serving.scoring import ScoringError
    from kaizen.tasks.workspace.redact import redact

    ws = open_workspace(workspace)
    try:
        result = _score_with_bar(ws, source, out)
    except (ScoringError, ServingError) as exc:
        raise fail("cannot score:", exc, 2) from exc
    console.print(f"wrote {result.rows} rows to {result.out} (champion v{result.model_version}, {result.files} "
                  f"file(s), {result.seconds:.1f} s): {result.labelled} labelled, {result.with_reason} with a reason, "
                  f"{result.captured} recorded in {redact(ws.captures)}")
    for problem in result.problems:
        console.print(f"  [yellow]{problem}[/]")


@app.command()
def predict(source: Annotated[str, typer.Argument(help="A text, or a CSV / JSON Lines / Parquet / text file.")],
            out: Annotated[Path | None, typer.Option(help="Where a file's predictions go (CSV).")] = None,
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Label texts with the champion, as `kaizen serve-model` would; a file's predictions go to CSV (as `kaizen
    score` writes them: each row's source and line, its columns, the label and each class's probability)."""
    from kaizen.tasks.serving.champion import ServingError, load_champion
    from kaizen.tasks.serving.scoring import ScoringError
    from kaizen.tasks.workspace.files import inner_name

    ws = open_workspace(workspace)
    path = Path(source)
    try:
        with console.status("loading the champion"):
            classifier = load_champion(ws)
        if not path.is_file():
            row = classifier.predict([source]).iloc[0]
            if row["reason"] is not None:
                raise fail("cannot predict:", ValueError(f"{row['reason']} (champion v{classifier.version})"))
            shown = ", ".join(f"{label} {row[f'p_{label}']:.3f}" for label in classifier.labels)
            console.print(f"{row['prediction']}  ({shown}; champion v{classifier.version})")
            return
        out = out or path.with_name(Path(inner_name(path.name)).stem + ".predictions.csv")
        result = _score_with_bar(ws, str(path), str(out), classifier, capture=False)  # a person's tries: no traffic
    except (ScoringError, ServingError) as exc:
        raise fail("cannot predict:", exc) from exc
    console.print(f"wrote {result.rows} predictions (champion v{result.model_version}) to {out}"
                  + (f"; {result.with_reason} text(s) got a reason instead of a label" if result.with_reason else ""))
    for problem in result.problems:
        console.print(f"  [yellow]{problem}[/]")
