"""What the loop did, for people: `kaizen history` and `kaizen status`, and the markdown of a Prefect run, all
read back from the iteration record (tasks/registry/record.py) and the ledger.
"""

from __future__ import annotations

import ast

from kaizen.tasks.ingest.corrections import Correction, correction_files, corrections
from kaizen.tasks.ingest.ledger import FileRecord, Ledger
from kaizen.tasks.operate.failures import failed_batches
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import IterationSummary, batches_seen, decided_runs, summary_from_run
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.layout import Workspace


def history(ws: Workspace) -> list[IterationSummary]:
    """Every decided iteration (and rollback), oldest first, read back from the MLflow runs; then every batch set
    aside as failed, with its error (tasks/operate/failures.py)."""
    runs = decided_runs(ws)
    decided = with_label_changes(runs, [summary_from_run(run, ws.settings.gate.metric) for run in runs])
    return with_corrections(ws, decided) + [failed_summary(ws, f) for f in failed_batches(ws)]


def run_labels(run) -> list[str] | None:
    """The label set an iteration ran with, from its run's params (`data.labels`, a Python list as logged);
    None for a run without settings (a rollback)."""
    logged = run.data.params.get("data.labels")
    return None if logged is None else [str(label) for label in ast.literal_eval(logged)]


def with_label_changes(runs: list, decided: list[IterationSummary]) -> list[IterationSummary]:
    """The iterations (`decided`, one per run of `runs`) with a line before the first that ran with another label
    set than the iteration before it: `labels: negative, positive -> negative, positive, neutral`."""
    lines: list[IterationSummary] = []
    before: list[str] | None = None
    for run, summary in zip(runs, decided, strict=True):
        labels = run_labels(run)
        if labels is not None and before is not None and labels != before:
            lines.append(IterationSummary(
                batch=summary.batch, files=0, rows_accepted=0, rows_quarantined=0, drift_share=None,
                champion_score=None, challenger_score=None, decision=Decision.LABELS, champion_version=None,
                reasons=[f"labels: {', '.join(before)} -> {', '.join(labels)}"], run_id=summary.run_id))
        before = labels or before
        lines.append(summary)
    return lines


def with_corrections(ws: Workspace, decided: list[IterationSummary]) -> list[IterationSummary]:
    """The iterations with a line per correction file (tasks/ingest/corrections.py) just before the iteration
    whose data version first applied it; those no iteration has applied yet come last."""
    with Ledger(ws.ledger_db) as ledger:
        files, made = correction_files(ledger), corrections(ledger)
    by_file: dict[str, list[Correction]] = {}
    for c in made:
        by_file.setdefault(c.file_sha256, []).append(c)
    waiting: dict[str | None, list[IterationSummary]] = {}
    for f in files:
        first = min((c.applied_in for c in by_file.get(f.sha256, []) if c.applied_in), default=None)
        waiting.setdefault(first, []).append(correction_summary(f, by_file.get(f.sha256, []), first))
    lines: list[IterationSummary] = []
    for summary in decided:
        lines += waiting.pop(summary.batch, []) + [summary]
    return lines + [line for group in waiting.values() for line in group]


def correction_summary(f: FileRecord, made: list[Correction], applied_in: str | None) -> IterationSummary:
    per_batch: dict[str, int] = {}
    for c in made:
        per_batch[c.batch_id or "staged rows"] = per_batch.get(c.batch_id or "staged rows", 0) + 1
    when = f"first applied by the data version of the iteration on {applied_in}" if applied_in else \
        "applied by the next iteration's data version"
    counts = ", ".join(f"{b}: {n}" for b, n in sorted(per_batch.items()))
    return IterationSummary(
        batch=", ".join(sorted(b for b in per_batch if b.startswith("batch-"))) or None, files=1,
        rows_accepted=f.rows_accepted, rows_quarantined=f.rows_quarantined, drift_share=None, champion_score=None,
        challenger_score=None, decision=Decision.CORRECTED, champion_version=None,
        reasons=[f"{f.name} (sha256 {f.sha256[:12]}): {f.rows_accepted} labels corrected ({counts or 'none'}), "
                 f"{f.rows_quarantined} rows quarantined; {when}"])


def failed_summary(ws: Workspace, failed: dict) -> IterationSummary:
    with Ledger(ws.ledger_db) as ledger:
        files = [f for f in ledger.files() if f.batch_id == failed["batch"]]
    return IterationSummary(
        batch=failed["batch"], files=len(files), rows_accepted=sum(f.rows_accepted for f in files),
        rows_quarantined=sum(f.rows_quarantined for f in files), drift_share=None, champion_score=None,
        challenger_score=None, decision=Decision.FAILED, champion_version=None,
        reasons=[f"{failed['error']} ({failed['attempts']} attempts in a row, the last at {failed['failed_at']}); "
                 f"set aside: fix the cause, then `kaizen batch retry {failed['batch']}`"])


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def as_markdown(summary: IterationSummary, ws: Workspace, ui_url: str = "http://127.0.0.1:5000") -> str:
    """The iteration's summary for a Prefect artifact, with a link to its run in the MLflow UI."""
    link = tracking.run_url(ws, summary.run_id, ui_url)
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


def run_markdown(summary: IterationSummary, ws: Workspace, files: list[str]) -> str:
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


def _model_state(client, ws: Workspace, alias: str) -> dict | None:
    ref = tracking.model_by_alias(client, ws.settings.model.registered_name, alias)
    if ref is None:
        return None
    metrics = client.get_run(ref.run_id).data.metrics
    return {
        "version": ref.version, "run_id": ref.run_id,
        "parent_version": ref.tags.get(TAG["parent_version"]) or None,
        "data_version": ref.tags.get(TAG["data_version"], ""),
        "batches_seen": batches_seen(ref),
        "metrics": {k.removeprefix("challenger."): v for k, v in sorted(metrics.items())
                    if k.startswith("challenger.")},
    }


def workspace_status(ws: Workspace) -> dict:
    """Everything `kaizen status --json` prints: models, batches, and what waits to be ingested."""
    from kaizen.tasks.ingest.collect import landed_files

    client = tracking.connect(ws)
    with Ledger(ws.ledger_db) as ledger:
        batches = [{"batch": b.batch_id, "rows": b.rows, "status": b.status, "decision": b.decision,
                    "model_version": b.model_version, "created_at": b.created_at, "trust": b.trust,
                    "trust_reason": b.trust_reason, "trust_by": b.trust_by} for b in ledger.batches()]
        staged = sum(f.rows_accepted for f in ledger.unbatched_files())
    return {
        "workspace": str(ws.root),
        "champion": _model_state(client, ws, tracking.CHAMPION),
        "previous_champion": _model_state(client, ws, tracking.PREVIOUS),
        "batches": batches,
        "failed": failed_batches(ws),
        "staged_rows": staged,
        "landing": landed_files(ws),
    }
