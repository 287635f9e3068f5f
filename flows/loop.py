"""One iteration of the kaizen loop, as a Prefect flow. Read it top to bottom: that is what one turn does.

The steps are plain functions in `tasks/`; here they are only wrapped as Prefect tasks (so each shows in the
UI, with retries where a server is involved) and chained.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from tasks import collect, data_version, evaluate, history, promote, registry, train
from tasks.workspace import Workspace

# Steps that talk to the tracking server retry with backoff; the others fail fast and say why.
SERVER = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "cache_policy": NO_CACHE}
LOCAL = {"cache_policy": NO_CACHE}

collect_files = task(collect.collect, name="collect", **LOCAL)
pick_batch = task(collect.next_batch, name="pick-batch", **LOCAL)
version_data = task(data_version.build_data_version, name="preprocess (dvc repro + push)", **LOCAL)
start_run = task(registry.start_iteration, name="start-run", **SERVER)
fine_tune = task(train.train_challenger, name="train", **LOCAL)
champion_files = task(registry.local_model, name="fetch-champion", **SERVER)
check = task(evaluate.evaluate, name="check (Evidently)", **LOCAL)
gate = task(promote.decide, name="promote", **SERVER)
finish = task(history.finish_iteration, name="finish", **SERVER)


@flow(name="kaizen-iteration", log_prints=True)
def iteration(workspace: str = ".") -> dict:
    """Collect new data; if a batch is ready, learn from it and promote the result only if it is better."""
    ws = Workspace.open(Path(workspace))
    collected = collect_files(ws)
    picked = pick_batch(ws)
    if picked is None:
        summary = history.IterationSummary(
            batch=None, files=len(collected.files), rows_accepted=collected.rows_accepted,
            rows_quarantined=collected.rows_quarantined, drift_share=None, champion_score=None,
            challenger_score=None, decision="no new data", reasons=[], champion_version=None)
        return summary.as_dict()
    batch_id, batches = picked
    version = version_data(ws)
    it = start_run(ws, batch_id, batches, version, flow_run_id=str(flow_run.id or ""))
    challenger = fine_tune(ws, it)
    champion_dir = champion_files(ws, it.champion.version) if it.champion else None
    evaluation = check(ws, it, challenger.model_dir, champion_dir)
    decision = gate(ws, it, challenger.model.version, evaluation)
    summary = finish(ws, it, evaluation, decision)
    create_markdown_artifact(markdown=history.as_markdown(summary, ws), key="kaizen-iteration",
                             description=f"kaizen iteration on {batch_id}")
    return summary.as_dict()
