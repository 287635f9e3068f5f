"""promote: the gate that decides whether the challenger replaces the champion, and the alias move.

The gate compares scores on the new batch's test split (the challenger must beat the champion by
`min_improvement` and reach `min_score`) and on every earlier batch's test split (it may not lose more than
`max_regression` on any of them: a model that forgets an earlier domain is refused). Its reasons are recorded
either way, as tags on the model version and on the iteration's run.
"""

from __future__ import annotations

from dataclasses import dataclass

from kaizen.tasks.faults import kill_point
from kaizen.tasks.settings import GateSettings
from kaizen.tasks.workspace import hold


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]  # every check, passed or failed, in words

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "rejected"


def promotion_gate(new_batch: str, challenger: dict[str, float], champion: dict[str, float] | None,
                   gate: GateSettings) -> GateDecision:
    """Scores are per batch id (the gate's metric on that batch's test split)."""
    metric, new = gate.metric, challenger[new_batch]
    failed: list[str] = []
    passed: list[str] = []
    (passed if new >= gate.min_score else failed).append(
        f"{metric} on {new_batch} is {new:.4f}, {'at or above' if new >= gate.min_score else 'below'} "
        f"min_score {gate.min_score:.4f}")
    if champion is None:
        passed.append("no champion yet: bootstrap")
        return GateDecision(not failed, failed + passed)

    gain = round(new - champion[new_batch], 9)  # a boundary is a boundary: 0.57 - 0.56 is 0.01, not a hair less
    (passed if gain >= gate.min_improvement else failed).append(
        f"{metric} on the new batch {new_batch}: challenger {new:.4f} vs champion {champion[new_batch]:.4f} "
        f"({gain:+.4f}; min_improvement {gate.min_improvement:+.4f})")
    for batch in sorted(champion):
        if batch == new_batch or batch not in challenger:
            continue
        drop = round(champion[batch] - challenger[batch], 9)
        (failed if drop > gate.max_regression else passed).append(
            f"{metric} on earlier {batch}: challenger {challenger[batch]:.4f} vs champion {champion[batch]:.4f} "
            f"({-drop:+.4f}; max_regression {gate.max_regression:.4f})")
    return GateDecision(not failed, failed + passed)


@dataclass(frozen=True)
class Decision:
    gate: GateDecision
    challenger_version: str
    champion_version: str | None  # after the decision
    previous_version: str | None  # the champion before, when it was replaced


def decide(ws, it, challenger_version: str, evaluation) -> Decision:
    """Apply the gate, move `champion` if it passes, and record the decision and its reasons either way."""
    from kaizen.tasks import lineage, registry
    from kaizen.tasks.record import TAG

    metric = ws.settings.gate.metric
    gate = promotion_gate(it.batch_id, evaluation.scores("challenger", metric),
                          evaluation.scores("champion", metric), ws.settings.gate)
    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    reasons = "\n".join(gate.reasons)
    # The intent first, on the run: a kill after the alias move below can still be completed from it.
    registry.set_tags(client, it.run_id, {TAG["gate_reasons"]: reasons, TAG["challenger_version"]: challenger_version})
    previous = None
    if gate.promote:
        started_from = it.champion.version if it.champion else None
        try:
            with hold(ws, "champion", wait=True):  # a rollback and this move take turns
                previous = registry.move_champion(client, name, challenger_version, started_from)  # the commit point
        except registry.ChampionMoved as exc:  # refused, and recorded why: the operator's move stands
            gate = GateDecision(False, [str(exc), *gate.reasons])
            reasons = "\n".join(gate.reasons)
        kill_point("promote:moved")
    tags = {TAG["decision"]: gate.verdict, TAG["reasons"]: reasons}
    registry.tag_version(client, name, challenger_version, tags)
    registry.set_tags(client, it.run_id, tags)
    champion = registry.model_by_alias(client, name, registry.CHAMPION)
    registry.set_tags(client, it.run_id, {TAG["champion_version"]: champion.version if champion else ""})
    if champion is not None:
        lineage.log_champion_over_time(client, it.loop_run_id, len(it.batches), evaluation, gate.promote,
                                       iteration_run=it.run_id)
    kill_point("finish:before-ledger")  # tests: the decision is recorded, the batch not yet closed
    return Decision(gate, challenger_version, champion.version if champion else None, previous)
