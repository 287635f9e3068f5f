"""Finishing what a killed iteration left: the ledger says its batch is still pending, MLflow may hold its run.

Moving the `champion` alias is the single commit point of an iteration. So, for a pending batch:
- if a run of an earlier attempt registered a version that is now the champion, the promotion was committed:
  its record is completed and the batch is done, nothing is trained again (likewise a recorded refusal);
- otherwise every earlier attempt is an orphan: its run is marked KILLED and its version, if it got one, is
  tagged `orphaned` (never promoted); the iteration then runs again, its training resuming from the last
  checkpoint of the killed attempt.
"""

from __future__ import annotations

from tasks import registry
from tasks.history import IterationSummary, batch_rows
from tasks.ledger import Ledger


def _attempts(client, ws, batch_id: str) -> list:
    """Runs of earlier attempts at `batch_id` (the ledger says it is pending), orphans already labelled aside."""
    runs = client.search_runs([registry.experiment_id(client, ws)],
                              filter_string=f"tags.`{registry.TAG['batch']}` = '{batch_id}'", max_results=100)
    return [run for run in runs if run.data.tags.get(registry.TAG["decision"]) != "orphaned"]


def recover_interrupted(ws, batch_id: str) -> IterationSummary | None:
    """Complete a decided attempt at `batch_id` (returning its summary), or label its orphans (None)."""
    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    attempts = _attempts(client, ws, batch_id)
    if not attempts:
        return None
    champion = registry.model_by_alias(client, name, registry.CHAMPION)
    for run in attempts:
        if champion is not None and champion.run_id == run.info.run_id:
            return _complete(client, ws, batch_id, run, "promoted", champion.version)
    for run in attempts:  # the gate refused and said so; only the ledger was not told
        if run.data.tags.get(registry.TAG["decision"]) == "rejected":
            return _complete(client, ws, batch_id, run, "rejected", champion.version if champion else None)
    for run in attempts:
        for mv in client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'"):
            registry.tag_version(client, name, str(mv.version), {
                registry.TAG["decision"]: "orphaned",
                registry.TAG["reasons"]: "its iteration was killed before the gate decided; never promoted"})
        registry.set_tags(client, run.info.run_id, {registry.TAG["decision"]: "orphaned"})
        client.set_terminated(run.info.run_id, "KILLED")
    return None


def _complete(client, ws, batch_id: str, run, decision: str, champion_version: str | None) -> IterationSummary:
    """The gate had decided (and a promotion's alias had moved) before the kill: write the record where the
    killed attempt did not get to, and close the batch."""
    reasons = run.data.tags.get("kaizen.gate_reasons", f"{decision} before the iteration was killed")
    challenger = run.data.tags["kaizen.challenger_version"]
    tags = {registry.TAG["decision"]: decision, registry.TAG["reasons"]: reasons}
    registry.tag_version(client, ws.settings.model.registered_name, challenger, tags)
    registry.set_tags(client, run.info.run_id, {**tags, "kaizen.champion_version": champion_version or "",
                                                "kaizen.recovered": f"{decision}: completed after a kill"})
    ledger = Ledger(ws.ledger_db)
    try:
        files, accepted, quarantined = batch_rows(ledger, batch_id)
        ledger.finish_batch(batch_id, run_id=run.info.run_id, model_version=challenger, decision=decision)
    finally:
        ledger.close()
    registry.log_metrics(client, run.info.run_id, {"batch.files": files, "batch.rows_accepted": accepted,
                                                   "batch.rows_quarantined": quarantined})
    client.set_terminated(run.info.run_id, "FINISHED")
    metrics, metric = run.data.metrics, ws.settings.gate.metric
    return IterationSummary(
        batch=batch_id, files=files, rows_accepted=accepted, rows_quarantined=quarantined,
        drift_share=metrics.get("drift.share"), champion_score=metrics.get(f"champion.{batch_id}.{metric}"),
        challenger_score=metrics.get(f"challenger.{batch_id}.{metric}"), decision=decision,
        reasons=reasons.splitlines(), champion_version=champion_version, challenger_version=challenger,
        run_id=run.info.run_id)
