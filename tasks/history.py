"""What the loop did: the summary of each iteration, closed in the ledger and the MLflow run, and read back
from MLflow (the one record of iterations) for `kaizen status`, the demo's table and history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.faults import kill_point
from tasks.ledger import Ledger


@dataclass(frozen=True)
class IterationSummary:
    batch: str | None  # None: nothing new to learn from
    files: int
    rows_accepted: int
    rows_quarantined: int
    drift_share: float | None
    champion_score: float | None  # the gate's metric on the new batch's test split
    challenger_score: float | None
    decision: str  # promoted, rejected or "no new data"
    reasons: list[str]
    champion_version: str | None
    challenger_version: str | None = None
    run_id: str | None = None
    collected: list[str] = field(default_factory=list)  # what collect did with each landed file, in words

    def as_dict(self) -> dict:
        return asdict(self)


def batch_rows(ledger: Ledger, batch_id: str) -> tuple[int, int, int]:
    """Files, accepted rows and quarantined rows of the files that formed `batch_id`."""
    files = [f for f in ledger.files() if f.batch_id == batch_id]
    return len(files), sum(f.rows_accepted for f in files), sum(f.rows_quarantined for f in files)


def finish_iteration(ws, it, evaluation, decision) -> IterationSummary:
    """Close the batch in the ledger and the run in MLflow; the summary is what the iteration did."""
    from tasks import registry

    metric = ws.settings.gate.metric
    champion = evaluation.scores("champion", metric)
    challenger = evaluation.scores("challenger", metric)
    kill_point("finish:before-ledger")  # tests: the decision is made, the batch not yet closed
    ledger = Ledger(ws.ledger_db)
    try:
        files, accepted, quarantined = batch_rows(ledger, it.batch_id)
        ledger.finish_batch(it.batch_id, run_id=it.run_id, model_version=decision.challenger_version,
                            decision=decision.gate.verdict)
    finally:
        ledger.close()
    summary = IterationSummary(
        batch=it.batch_id, files=files, rows_accepted=accepted, rows_quarantined=quarantined,
        drift_share=evaluation.drift.share if evaluation.drift else None,
        champion_score=champion[it.batch_id] if champion else None, challenger_score=challenger[it.batch_id],
        decision=decision.gate.verdict, reasons=decision.gate.reasons, champion_version=decision.champion_version,
        challenger_version=decision.challenger_version, run_id=it.run_id,
    )
    client = registry.connect(ws)
    registry.log_metrics(client, it.run_id, {"batch.files": files, "batch.rows_accepted": accepted,
                                               "batch.rows_quarantined": quarantined})
    client.log_dict(it.run_id, summary.as_dict(), "summary.json")
    client.set_terminated(it.run_id, "FINISHED")
    return summary


def history(ws) -> list[IterationSummary]:
    """Every finished iteration, oldest first, read back from the MLflow runs."""
    from tasks import registry

    client = registry.connect(ws)
    runs = client.search_runs([registry.experiment_id(client, ws)], filter_string="tags.`kaizen.decision` != ''",
                              order_by=["attributes.start_time ASC"], max_results=10000)
    metric = ws.settings.gate.metric
    out = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(registry.TAG["decision"]) == "orphaned":  # a killed attempt, redone by a later run
            continue
        batch = tags.get(registry.TAG["batch"])
        out.append(IterationSummary(
            batch=batch, files=int(metrics.get("batch.files", 0)), rows_accepted=int(metrics.get("batch.rows_accepted", 0)),
            rows_quarantined=int(metrics.get("batch.rows_quarantined", 0)),
            drift_share=metrics.get("drift.share"), champion_score=metrics.get(f"champion.{batch}.{metric}"),
            challenger_score=metrics.get(f"challenger.{batch}.{metric}"), decision=tags.get(registry.TAG["decision"]),
            reasons=tags.get(registry.TAG["reasons"], "").splitlines(),
            champion_version=tags.get("kaizen.champion_version") or None,
            challenger_version=tags.get("kaizen.challenger_version"), run_id=run.info.run_id,
        ))
    return out


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def as_markdown(summary: IterationSummary, ws, ui_url: str = "http://127.0.0.1:5000") -> str:
    """The iteration's summary for a Prefect artifact, with a link to its run in the MLflow UI."""
    from tasks import registry

    experiment = registry.experiment_id(registry.connect(ws), ws)
    link = f"{ui_url}/#/experiments/{experiment}/runs/{summary.run_id}"
    reasons = "\n".join(f"- {r}" for r in summary.reasons)
    return (
        f"# kaizen iteration: {summary.batch}\n\n"
        "| batch | rows accepted | rows quarantined | drift share | champion | challenger | decision | champion version |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {summary.batch} | {summary.rows_accepted} | {summary.rows_quarantined} | {_score(summary.drift_share)} "
        f"| {_score(summary.champion_score)} | {_score(summary.challenger_score)} | {summary.decision} "
        f"| {summary.champion_version or '–'} |\n\n"
        f"## Why\n{reasons}\n\nMLflow run: [{summary.run_id}]({link})\n"
    )


def run_markdown(summary: IterationSummary, ws, files: list[str]) -> str:
    """The Prefect artifact of one flow run: the iteration's summary linked to the workspace's MLflow UI (the
    tracking server when one is used), or what was collected when no batch was ready; and what started it."""
    if summary.batch:
        text = as_markdown(summary, ws, ui_url=ws.mlflow_ui_url)
    else:
        text = (f"# kaizen iteration: no new data\n\n{summary.files} file(s) collected, {summary.rows_accepted} rows "
                f"accepted, {summary.rows_quarantined} quarantined; no batch ready to learn from.\n")
    if summary.collected:  # each landed file's outcome, quarantine reasons included
        text += "\n## Collected\n" + "".join(f"- {line}\n" for line in summary.collected)
    if files:
        text += f"\nStarted by the arrival of: {', '.join(f'`{f}`' for f in files)}\n"
    return text


def _model_state(client, ws, alias: str) -> dict | None:
    from tasks import registry

    ref = registry.model_by_alias(client, ws.settings.model.registered_name, alias)
    if ref is None:
        return None
    metrics = client.get_run(ref.run_id).data.metrics
    return {
        "version": ref.version, "run_id": ref.run_id,
        "parent_version": ref.tags.get(registry.TAG["parent_version"]) or None,
        "data_version": ref.tags.get(registry.TAG["data_version"], ""),
        "batches_seen": ref.batches_seen,
        "metrics": {k.removeprefix("challenger."): v for k, v in sorted(metrics.items())
                    if k.startswith("challenger.")},
    }


def workspace_status(ws) -> dict:
    """Everything `kaizen status --json` prints: models, batches, and what waits to be ingested."""
    from tasks import registry
    from tasks.collect import landed_files

    client = registry.connect(ws)
    ledger = Ledger(ws.ledger_db)
    try:
        batches = [{"batch": b.batch_id, "rows": b.rows, "status": b.status, "decision": b.decision,
                    "model_version": b.model_version, "created_at": b.created_at} for b in ledger.batches()]
        staged = sum(f.rows_accepted for f in ledger.unbatched_files())
    finally:
        ledger.close()
    return {
        "workspace": str(ws.root),
        "champion": _model_state(client, ws, registry.CHAMPION),
        "previous_champion": _model_state(client, ws, registry.PREVIOUS),
        "batches": batches,
        "staged_rows": staged,
        "landing": [Path(p).name for p in landed_files(ws)],
    }


def skip_iteration(ws, it, drift, need) -> IterationSummary:
    """Record that the champion already serves the new batch well: no training, no new version."""
    from tasks import registry

    client = registry.connect(ws)
    reasons = [f"training skipped: {need.reason}"]
    registry.set_tags(client, it.run_id, {registry.TAG["decision"]: "skipped", registry.TAG["reasons"]: reasons[0],
                                          "kaizen.champion_version": it.champion.version})
    metric = ws.settings.gate.metric
    registry.log_metrics(client, it.run_id, {f"champion.{it.batch_id}.{metric}": need.champion_score})
    ledger = Ledger(ws.ledger_db)
    try:
        files, accepted, quarantined = batch_rows(ledger, it.batch_id)
        ledger.finish_batch(it.batch_id, run_id=it.run_id, model_version=None, decision="skipped")
    finally:
        ledger.close()
    registry.log_metrics(client, it.run_id, {"batch.files": files, "batch.rows_accepted": accepted,
                                             "batch.rows_quarantined": quarantined})
    client.set_terminated(it.run_id, "FINISHED")
    return IterationSummary(
        batch=it.batch_id, files=files, rows_accepted=accepted, rows_quarantined=quarantined,
        drift_share=drift.share if drift else None, champion_score=need.champion_score, challenger_score=None,
        decision="skipped", reasons=reasons, champion_version=it.champion.version, run_id=it.run_id)
