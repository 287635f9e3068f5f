"""One iteration of the kaizen loop, as a Prefect flow. Read it top to bottom: that is what one turn does.

The steps are plain functions in `tasks/`; here they are only wrapped as Prefect tasks (so each shows in the
UI, with retries where a server is involved) and chained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import deployment
from tasks import collect, data_version, evaluate, history, promote, recovery, registry, train
from tasks.workspace import Workspace, hold

# Steps that talk to the tracking server retry with backoff; the others fail fast and say why.
SERVER = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "cache_policy": NO_CACHE}
LOCAL = {"cache_policy": NO_CACHE}

collect_files = task(collect.collect, name="collect", **LOCAL)
pick_batch = task(collect.next_batch, name="pick-batch", **LOCAL)
version_data = task(data_version.build_data_version, name="preprocess (dvc repro + push)", **LOCAL)
start_run = task(registry.start_iteration, name="start-run", **SERVER)
fine_tune = task(train.train_challenger, name="train", **LOCAL)
champion_files = task(registry.local_model, name="fetch-champion", **SERVER)
check_drift = task(evaluate.check_drift, name="check drift (Evidently)", **LOCAL)
weigh_training = task(evaluate.worth_training, name="worth training?", **LOCAL)
check = task(evaluate.check_quality, name="check quality (Evidently)", **LOCAL)
skip = task(history.skip_iteration, name="skip training", **SERVER)
recover = task(recovery.recover_interrupted, name="recover an interrupted attempt", **SERVER)
gate = task(promote.decide, name="promote", **SERVER)
finish = task(history.finish_iteration, name="finish", **SERVER)
follow_up = task(deployment.queue_follow_up, name="queue follow-up", **SERVER)


@flow(name="kaizen-iteration", log_prints=True)
def iteration(workspace: str = ".", files: list[str] | None = None, force_train: bool = False) -> dict:
    """Collect new data; if a batch is ready, learn from it and promote the result only if it is better.

    `files` are the files named by the `kaizen.data.arrived` event that started this run, shown on the run:
    the loop collects everything waiting in the landing zone either way, each file exactly once.
    `force_train` trains even when the champion already does well on the new batch.
    """
    ws = Workspace.open(Path(workspace))
    if files:
        print(f"started by the arrival of {', '.join(files)}")
    with hold(ws, "loop", wait=True) as waited:
        if waited:
            print("waited for another loop in this workspace to finish (DVC allows one at a time)")
        summary = one_turn(ws, force_train)
    create_markdown_artifact(markdown=history.run_markdown(summary, ws, files or []), key="kaizen-iteration",
                             description=f"kaizen iteration on {summary.batch or 'no new data'}")
    if summary.batch:  # a served run learns from one batch; more waiting get a run of their own
        follow_up(ws)
    return summary.as_dict()


def one_turn(ws: Workspace, force_train: bool = False) -> history.IterationSummary:
    """The steps of one iteration, in order (the caller holds the workspace)."""
    collected = collect_files(ws)
    picked = pick_batch(ws)
    if picked is None:
        return history.IterationSummary(
            batch=None, files=len(collected.files), rows_accepted=collected.rows_accepted,
            rows_quarantined=collected.rows_quarantined, drift_share=None, champion_score=None,
            challenger_score=None, decision="no new data", reasons=[], champion_version=None,
            collected=collected.describe())
    batch_id, batches = picked
    completed = recover(ws, batch_id)  # a killed attempt that had already promoted: only its record was left
    if completed is not None:
        return replace(completed, collected=collected.describe())
    version = version_data(ws)
    it = start_run(ws, batch_id, batches, version, flow_run_id=str(flow_run.id or ""))
    champion_dir = champion_files(ws, it.champion.version) if it.champion else None
    drift = check_drift(ws, it)
    need = weigh_training(ws, it, champion_dir, drift, force_train)
    if not need.train:  # the batch still joins the data, the replay pool and every later evaluation
        return replace(skip(ws, it, drift, need), collected=collected.describe())
    challenger = fine_tune(ws, it)
    evaluation = check(ws, it, challenger.model_dir, champion_dir, drift)
    decision = gate(ws, it, challenger.model.version, evaluation)
    return replace(finish(ws, it, evaluation, decision), collected=collected.describe())
