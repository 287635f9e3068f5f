"""The commands that use the champion: `serve-model` (MLflow's model server) and `score` (batch scoring).
flows/cli/__init__.py merges them into the `kaizen` command; thin like every command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace

app = typer.Typer()


@app.command()
def serve_model(workspace: WorkspaceOpt = Path("."),
                port: Annotated[int | None, typer.Option(help="Default: serving.port")] = None,
                host: Annotated[str | None, typer.Option(help="Default: servers.host")] = None,
                version: Annotated[str | None, typer.Option(help="Serve this version, not the champion.")] = None,
                ) -> None:
    """Serve the champion over HTTP with `mlflow models serve` (POST /invocations, GET /ping)."""
    from mlflow.exceptions import MlflowException

    from kaizen.tasks.registry import tracking
    from kaizen.tasks.serving.champion import serve_command

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
    command, env = serve_command(ws, port, host, version)
    console.print(f"serving {name} v{served.version} at http://{host}:{port}/invocations "
                  f"(`{' '.join(command[2:])}`); a later promotion is served after a restart")
    os.execve(command[0], command, env)  # the server replaces this process: signals reach it directly


@app.command()
def score(source: Annotated[str, typer.Argument(help="A CSV / JSON Lines / Parquet / text file, a folder of "
                                                     "them, or an fsspec URL.")],
          out: Annotated[str, typer.Option("--out", help="The Parquet file to write (a path or an fsspec URL).")],
          workspace: WorkspaceOpt = Path(".")) -> None:
    """Label every text with the champion, in chunks, into Parquet: prediction, each class's probability, the
    model version, and a reason for each row or file that could not be labelled."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from kaizen.tasks.serving.champion import ServingError
    from kaizen.tasks.serving.scoring import ScoringError, score

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


@app.command()
def predict(source: Annotated[str, typer.Argument(help="A text, or a CSV / JSON Lines / Parquet / text file.")],
            out: Annotated[Path | None, typer.Option(help="Where a file's predictions go (CSV).")] = None,
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Label texts with the champion, as `kaizen serve-model` would; a file's predictions go to CSV."""
    import pandas as pd
    from rich.progress import Progress

    from kaizen.tasks.operate.operations import OperationError, read_texts
    from kaizen.tasks.serving.champion import ServingError, load_champion

    ws = open_workspace(workspace)
    path = Path(source)
    try:
        with console.status("loading the champion"):
            classifier = load_champion(ws)
        if not path.is_file():
            row = classifier.predict([source]).iloc[0]
            if row["reason"] is not None:
                raise fail("cannot predict:", ValueError(f"{row['reason']} (champion v{classifier.version})"))
            shown = ", ".join(f"{label} {row[f'p_{label}']:.3f}" for label in ws.settings.data.labels)
            console.print(f"{row['prediction']}  ({shown}; champion v{classifier.version})")
            return
        frame = read_texts(path, ws.settings.data.text_column)
    except (OperationError, ServingError) as exc:
        raise fail("cannot predict:", exc) from exc
    texts, step, parts = frame[ws.settings.data.text_column].tolist(), ws.settings.serving.chunk_rows, []
    with Progress(console=console) as bar:
        job = bar.add_task(f"labelling {len(frame)} texts", total=len(frame))
        for start in range(0, len(texts), step):
            parts.append(classifier.predict(texts[start : start + step]))
            bar.update(job, completed=start + len(parts[-1]))
    predicted = pd.concat(parts, ignore_index=True) if parts else classifier.predict([])
    frame = frame.join(predicted.set_index(frame.index), rsuffix="_predicted").assign(model_version=classifier.version)
    out = out or path.with_name(path.stem + ".predictions.csv")
    frame.to_csv(out, index=False)
    unlabelled = int(frame["reason"].notna().sum())
    console.print(f"wrote {len(frame)} predictions (champion v{classifier.version}) to {out}"
                  + (f"; {unlabelled} text(s) got a reason instead of a label" if unlabelled else ""))
