"""Finishing what a killed iteration left: the ledger says its batch is still pending, MLflow may hold its run.

Moving the `champion` alias is the single commit point of an iteration. So, for a pending batch:
- if a run of an earlier attempt registered a version that is now the champion, the promotion was committed:
  its record is completed and the batch is done, nothing is trained again (likewise a recorded refusal);
- likewise if that version was the champion once and an operator has rolled it back since (`kaizen rollback`
  tags the replaced version `rolled_back`): the iteration is recorded as promoted, the rollback stands;
- otherwise every earlier attempt is an orphan: its run is marked KILLED and its version, if it got one, is
  tagged `orphaned` (never promoted); the iteration then runs again, its training resuming from the last
  checkpoint of the killed attempt.
"""

from __future__ import annotations

from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import IterationSummary, close_iteration, in_workspace
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.layout import Workspace


def _attempts(client, ws: Workspace, batch_id: str) -> list:
    """Runs of earlier attempts at `batch_id` (the ledger says it is pending) in this workspace, orphans already
    labelled aside: another workspace's batch of the same name on the same tracking server is never touched."""
    runs = client.search_runs([tracking.experiment_id(client, ws)],
                              filter_string=f"tags.`{TAG['batch']}` = '{batch_id}'", max_results=100)
    return [run for run in runs if run.data.tags.get(TAG["decision"]) != Decision.ORPHANED and in_workspace(run, ws)]


def recover_interrupted(ws: Workspace, batch_id: str) -> IterationSummary | None:
    """Complete a decided attempt at `batch_id` (returning its summary), or label its orphans (None)."""
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    attempts = _attempts(client, ws, batch_id)
    if not attempts:
        return None
    champion = tracking.model_by_alias(client, name, tracking.CHAMPION)
    for run in attempts:
        if champion is not None and champion.run_id == run.info.run_id:
            return _complete(client, ws, batch_id, run, Decision.PROMOTED, champion.version)
    for run in attempts:  # the gate refused and said so; only the ledger was not told
        if run.data.tags.get(TAG["decision"]) == Decision.REJECTED:
            return _complete(client, ws, batch_id, run, Decision.REJECTED, champion.version if champion else None)
    for run in attempts:  # promoted, and rolled back by an operator before the record was written
        for mv in client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'"):
            if TAG["rolled_back"] in mv.tags:
                return _complete(client, ws, batch_id, run, Decision.PROMOTED, champion.version if champion else None,
                                 rolled_back=f"v{mv.version} rolled back {mv.tags[TAG['rolled_back']]}")
    for run in attempts:
        for mv in client.search_model_versions(f"name='{name}' and run_id='{run.info.run_id}'"):
            tracking.tag_version(client, name, str(mv.version), {
                TAG["decision"]: Decision.ORPHANED,
                TAG["reasons"]: "its iteration was killed before the gate decided; never promoted"})
        tracking.set_tags(client, run.info.run_id, {TAG["decision"]: Decision.ORPHANED})
        client.set_terminated(run.info.run_id, "KILLED")
    return None


def _complete(client, ws: Workspace, batch_id: str, run, decision: Decision, champion_version: str | None,
              rolled_back: str | None = None) -> IterationSummary:
    """The gate had decided (and a promotion's alias had moved) before the kill: write the record where the
    killed attempt did not get to, and close the batch. `rolled_back`: how an operator has rolled the promoted
    version back since; the aliases are then the operator's, left as they are."""
    reasons = run.data.tags.get(TAG["gate_reasons"], f"{decision} before the iteration was killed")
    challenger = run.data.tags[TAG["challenger_version"]]
    tags = {TAG["decision"]: decision, TAG["reasons"]: reasons}
    tracking.tag_version(client, ws.settings.model.registered_name, challenger, tags)
    recovered = f"{decision}: completed after a kill" + (f"; {rolled_back}" if rolled_back else "")
    tracking.set_tags(client, run.info.run_id, {**tags, TAG["champion_version"]: champion_version or "",
                                                TAG["recovered"]: recovered})
    parent = run.data.tags.get(TAG["parent_version"])
    name = ws.settings.model.registered_name
    if (decision == Decision.PROMOTED and not rolled_back and parent
            and tracking.model_by_alias(client, name, tracking.PREVIOUS) is None):
        client.set_registered_model_alias(name, tracking.PREVIOUS, parent)  # killed between the alias moves
    return close_iteration(ws, batch_id, run.info.run_id, decision, challenger)
