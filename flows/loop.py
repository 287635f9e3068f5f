"""One iteration of the kaizen loop, as a Prefect flow. Read it top to bottom: that is what one turn does.

The steps are plain functions in `tasks/`; here each is only wrapped as a Prefect task of the same name (so it
shows in the UI) and chained. An attempt that fails is counted against its batch (tasks/operate/failures.py).
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment, flow_run
from prefect.utilities.timeout import timeout

from kaizen.tasks.data import data_version, restore
from kaizen.tasks.evaluation import approval, evaluate, promote, screening
from kaizen.tasks.ingest import collect as ingest
from kaizen.tasks.notify import alerts, arrivals
from kaizen.tasks.operate import failures, history, recovery
from kaizen.tasks.registry import lineage, record, tracking
from kaizen.tasks.registry.record import Iteration, IterationSummary
from kaizen.tasks.registry.tags import Decision
from kaizen.tasks.runtime import callers, zombies
from kaizen.tasks.training import train
from kaizen.tasks.workspace.layout import Workspace, hold
from kaizen.tasks.workspace.members import open_member


def step(fn):
    """`fn` as a Prefect task named after it. No Prefect retries: a step is not safe to repeat half done (a second
    run, a second version), and MLflow already retries each request to the tracking server with a bounded total
    wait (`operations.tracking_*`, set by tracking.connect), the loop's one retry layer. Nothing is cached: every
    step reads or changes the workspace."""
    return task(fn, name=fn.__name__, cache_policy=NO_CACHE)


collect = step(ingest.collect)
next_batch = step(ingest.next_batch)
recover_interrupted = step(recovery.recover_interrupted)
restore_inputs = step(restore.restore_inputs)
build_data_version = step(data_version.build_data_version)
start_iteration = step(record.start_iteration)
labeling_lineage = step(lineage.labeling_lineage)
local_model = step(tracking.local_model)
screen = step(screening.screen)
check_drift = step(evaluate.check_drift)
announce_drift = step(alerts.announce_drift)
judge_labels = step(screening.judge_labels)
worth_training = step(screening.worth_training)
record_without_training = step(screening.record_without_training)
train_challenger = step(train.train_challenger)
check_quality = step(evaluate.check_quality)
judge = step(promote.judge)
# A subflow, not a task: it pauses for a person's answer (tasks/evaluation/approval.py says why not the whole run).
ask_approval = flow(name="kaizen-approval", validate_parameters=False, log_prints=True)(approval.ask_approval)
decide = step(promote.decide)
close_iteration = step(record.close_iteration)
announce_decision = step(alerts.announce_decision)
queue_follow_up = step(arrivals.queue_follow_up)
note_failure = step(failures.note_failure)


@flow(name="kaizen-iteration", log_prints=True)
def iteration(workspace: str = ".", files: list[str] | None = None, force_train: bool = False,
              join: str | None = None) -> dict:
    """Collect new data; if a batch is ready, learn from it and promote the result only if it is better.

    `files` are the files named by the `kaizen.data.arrived` event that started this run, shown on the run:
    the loop collects everything waiting in the landing zone either way, each file exactly once.
    `force_train` trains even when the champion already does well on the new batch.
    `join`: the database of a shared loop; an empty `workspace` folder joins it first (a worker's new disk), and a
    relative one lies under KAIZEN_HOME when the worker sets it.
    """
    callers.deployed(iteration, workspace=workspace, join=join)  # a deployed run works where it was deployed
    ws = open_member(workspace, join)
    if deployment.id:  # which process runs this, so that a `kaizen serve` started later can tell it died
        zombies.note_process(ws, str(flow_run.id))
    if files:
        print(f"started by the arrival of {', '.join(files)}")
    with hold(ws, "loop", wait=True) as waited:
        if waited:
            print("waited for another loop in this workspace to finish (DVC allows one at a time)")
        summary = one_turn(ws, force_train)
    announce_decision(ws, summary)  # promoted, rejected or suspect: the automations tell people
    create_markdown_artifact(markdown=history.run_markdown(summary, ws, files or []), key="kaizen-iteration",
                             description=f"kaizen iteration on {summary.batch or 'no new data'}")
    if summary.batch:  # a served run learns from one batch; more waiting get a run of their own
        queue_follow_up(ws)
    return summary.as_dict()


def one_turn(ws: Workspace, force_train: bool = False) -> IterationSummary:
    """The steps of one iteration, in order (the caller holds the workspace)."""
    collected = collect(ws)
    picked = next_batch(ws)
    if picked is None:
        return IterationSummary(
            batch=None, files=len(collected.files), rows_accepted=collected.rows_accepted,
            rows_quarantined=collected.rows_quarantined, drift_share=None, champion_score=None,
            challenger_score=None, decision=Decision.NO_NEW_DATA, reasons=[], champion_version=None,
            collected=collected.describe())
    batch_id, batches = picked
    try:
        summary = learn_in_time(ws, batch_id, batches, force_train)
    except Exception as exc:  # one failed attempt; the same error too often and the batch is set aside
        if note_failure(ws, batch_id, exc).set_aside:
            queue_follow_up(ws)  # the batches behind it go on, in a run of their own
        raise
    return replace(summary, collected=collected.describe())


class IterationTimeout(TimeoutError):
    """The iteration ran longer than operations.iteration_timeout_seconds."""


def learn_in_time(ws: Workspace, batch_id: str, batches: list[str], force_train: bool) -> IterationSummary:
    """`learn`, stopped by Prefect's timeout after `operations.iteration_timeout_seconds`: a hung fine-tune ends
    the run (a failed attempt), so it never holds the deployment's one slot for good."""
    limit = ws.settings.operations.iteration_timeout_seconds
    try:
        with timeout(seconds=limit, timeout_exc_type=IterationTimeout):
            return learn(ws, batch_id, batches, force_train)
    except IterationTimeout as exc:
        raise IterationTimeout(f"the iteration on {batch_id} ran longer than operations.iteration_timeout_seconds "
                               f"({limit} s) and was stopped") from exc


def learn(ws: Workspace, batch_id: str, batches: list[str], force_train: bool) -> IterationSummary:
    """Learn from one batch: check it, train a challenger from the champion, check that, promote it if the
    evidence says it is better."""
    completed = recover_interrupted(ws, batch_id)  # a killed attempt that had decided: only its record was left
    if completed is not None:
        return completed
    print(restore_inputs(ws).describe())  # this folder is a cache: the stores hold the loop's state
    version = build_data_version(ws, batch_id)
    it = start_iteration(ws, batch_id, batches, version, flow_run_id=str(flow_run.id or ""))
    it = labeling_lineage(ws, it)  # rows labeled from `kaizen select`'s queues: which model's doubt asked for them
    champion_dir = local_model(ws, it.champion.version) if it.champion else None
    unusable = screen(ws, it)  # a batch no challenger could be judged on
    if unusable:
        return finish_without_training(ws, it, Decision.SKIPPED, unusable)
    drift = check_drift(ws, it)
    announce_drift(ws, it, drift)
    labels = judge_labels(ws, it, champion_dir)
    if not labels.trusted:  # never trained on, never replayed, no yardstick, until an operator trusts it
        return finish_without_training(ws, it, Decision.SUSPECT, labels.reason)
    need = worth_training(ws, it, champion_dir, drift, force_train)
    if not need.train:  # the batch still joins the data, the replay pool and every later evaluation
        return finish_without_training(ws, it, Decision.SKIPPED, f"training skipped: {need.reason}", need.champion_score)
    challenger = train_challenger(ws, it)
    evaluation = check_quality(ws, it, challenger, champion_dir, drift)
    verdict = judge(ws, it, evaluation)
    if verdict.promote and ws.settings.gate.require_approval:  # a person has the last word before the alias moves
        verdict = ask_approval(ws, it.batch_id, challenger.model.version, verdict)
    decision = decide(ws, it, challenger.model.version, evaluation, verdict)
    return close_iteration(ws, batch_id, it.run_id, decision.gate.verdict, decision.challenger_version)


def finish_without_training(ws: Workspace, it: Iteration, decision: Decision, reason: str,
                            champion_score: float | None = None) -> IterationSummary:
    record_without_training(ws, it, decision, reason, champion_score)
    return close_iteration(ws, it.batch_id, it.run_id, decision, None)
