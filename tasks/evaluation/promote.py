"""promote: the gate that decides whether the challenger replaces the champion, and the alias move.

The gate judges champion and challenger on the same rows (tasks/evaluation/stats.py), so noise is not read as a verdict:
- on the new batch the challenger must reach `min_score` and predict more than one label; with
  `require_improvement` it must also gain at least `min_improvement` and be better by a one-sided exact
  McNemar test at `improvement_alpha` (without it, that test is only reported);
- on every trusted earlier batch, on all of them pooled, and (without `require_improvement`) on the new batch,
  it is refused only when a loss beyond `max_regression` is shown: a one-sided paired-bootstrap test per
  batch, Holm-corrected over those checks at `alpha`; with `judge_against_best`, the same test against the best
  model each earlier batch has had, where that is not the champion, joins them (tasks/evaluation/best.py: no
  ratchet of losses each within the margin).
Why a new batch need not show a gain by default: the challenger was trained on it, and its test split is too
small to see a gain of a few points (bench/README.md: two challengers in eighteen refused, both better held out).
Every check is recorded with its estimate, interval and verdict, on the model version and the iteration's run,
and the version gets a one-line description of the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kaizen.tasks.evaluation import stats
from kaizen.tasks.evaluation.best import record_promotion
from kaizen.tasks.evaluation.paired import PairedPredictions
from kaizen.tasks.model.predict import scores
from kaizen.tasks.registry import tags
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.layout import Workspace, hold
from kaizen.tasks.workspace.settings import GateSettings

if TYPE_CHECKING:
    from kaizen.tasks.registry.record import Iteration


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str]  # every check, failed ones first, in words
    summary: str  # one line: the verdict and its main reason

    @property
    def verdict(self) -> tags.Decision:
        return tags.Decision.PROMOTED if self.promote else tags.Decision.REJECTED


def _new_batch_checks(batch: str, rows: PairedPredictions, gate: GateSettings) -> tuple[list[str], list[str]]:
    """(failed, passed) checks of the challenger on the new batch."""
    failed: list[str] = []
    passed: list[str] = []
    score = scores(np.asarray(rows.labels), np.asarray(rows.challenger))[gate.metric]
    (passed if score >= gate.min_score else failed).append(
        f"{gate.metric} on {batch} is {score:.4f}, {'at or above' if score >= gate.min_score else 'below'} "
        f"min_score {gate.min_score:.4f}")
    if len(set(rows.labels)) > 1 and len(set(rows.challenger)) == 1:
        failed.append(f"the challenger predicts {rows.challenger[0]!r} for every row of {batch}: a constant "
                      "predictor is never promoted")
    if rows.champion is None:
        return failed, passed + ["no champion yet: bootstrap"]
    diff, _ = stats.paired_difference(rows.correct("champion"), rows.correct("challenger"),
                                      confidence=1 - gate.alpha, resamples=gate.resamples)
    p = stats.mcnemar_exact(diff.wins, diff.losses)
    if not gate.require_improvement:  # reported only: the loss test on the new batch decides (_loss_checks)
        passed.append(f"on the new batch {batch}, McNemar's exact test that the challenger is better gives "
                      f"p={p:.3f} ({diff.wins} won, {diff.losses} lost): not required (require_improvement false)")
        return failed, passed
    # Rounded: a boundary is a boundary (2 rows of 200 is a gain of 0.01, not a hair less).
    ok = round(diff.estimate, 9) >= gate.min_improvement and p <= gate.improvement_alpha
    (passed if ok else failed).append(
        f"accuracy on the new batch {batch}: challenger minus champion {diff.describe()}; better by McNemar's "
        f"exact test p={p:.3f} (improvement_alpha {gate.improvement_alpha:g}, min_improvement "
        f"{gate.min_improvement:+.3f}): {'improved' if ok else 'no improvement shown'}")
    return failed, passed


def _loss_checks(judged: dict[str, PairedPredictions], new_batch: str,
                 gate: GateSettings) -> tuple[list[str], list[str]]:
    """(failed, passed) checks of a loss beyond the margin on each batch in `judged` (the trusted earlier ones,
    and the new one when it is judged too), and on the earlier ones pooled."""
    groups = {name: (rows.correct("champion"), rows.correct("challenger")) for name, rows in judged.items()}
    earlier = [name for name in groups if name != new_batch]
    if len(earlier) > 1:
        groups["all earlier batches pooled"] = (np.concatenate([groups[b][0] for b in earlier]),
                                                np.concatenate([groups[b][1] for b in earlier]))
    rival = dict.fromkeys(groups, "champion")  # whom each check compares the challenger with
    for name in [b for b in earlier if judged[b].best is not None and gate.judge_against_best]:
        best = f"v{judged[name].best_version}"  # in the same Holm family, so that alpha still holds
        check = f"{name} against the best model {best} it has had"
        groups[check], rival[check] = (judged[name].correct("best"), judged[name].correct("challenger")), best
    diffs, p_values = {}, {}
    for name, (baseline, challenger) in groups.items():
        diffs[name], draws = stats.paired_difference(baseline, challenger, confidence=1 - gate.alpha,
                                                     resamples=gate.resamples)
        p_values[name] = stats.regression_p_value(draws, gate.max_regression)
    shown = stats.holm(p_values, gate.alpha)
    failed: list[str] = []
    passed: list[str] = []
    for name in groups:
        where = ("the new batch " if name == new_batch else
                 "earlier " if name in earlier or rival[name] != "champion" else "")
        (failed if shown[name] else passed).append(
            f"accuracy on {where}{name}: challenger minus {rival[name]} {diffs[name].describe()}; a loss beyond "
            f"max_regression {gate.max_regression:g} is {'shown' if shown[name] else 'not shown'} "
            f"(p={p_values[name]:.3f}, Holm over {len(groups)} tests at alpha {gate.alpha:g})")
    return failed, passed


def promotion_gate(new_batch: str, paired: dict[str, PairedPredictions], gate: GateSettings) -> GateDecision:
    """Judge the challenger on the new batch and on every other batch in `paired` (the trusted earlier ones)."""
    failed, passed = _new_batch_checks(new_batch, paired[new_batch], gate)
    judged = {b: rows for b, rows in paired.items() if b != new_batch}
    if not gate.require_improvement:  # first, so that its verdict leads the reasons
        judged = {new_batch: paired[new_batch], **judged}
    if paired[new_batch].champion is not None and judged:
        more_failed, more_passed = _loss_checks(judged, new_batch, gate)
        failed, passed = failed + more_failed, passed + more_passed
    promote = not failed
    return GateDecision(promote, failed + passed, _summary(promote, new_batch, failed, passed))


def _summary(promote: bool, new_batch: str, failed: list[str], passed: list[str]) -> str:
    """The version's description: the verdict and the check that decided it."""
    if not promote:
        return f"{tags.Decision.REJECTED}: {failed[0]}"
    improvement = next((r for r in passed if r.startswith(f"accuracy on the new batch {new_batch}")), passed[-1])
    return f"{tags.Decision.PROMOTED}: {improvement}"


@dataclass(frozen=True)
class Decision:
    gate: GateDecision
    challenger_version: str
    champion_version: str | None  # after the decision
    previous_version: str | None  # the champion before, when it was replaced


def judge(ws: Workspace, it: Iteration, evaluation) -> GateDecision:
    """The gate's verdict on the iteration's evaluation (nothing recorded or moved yet)."""
    return promotion_gate(it.batch_id, evaluation.paired, ws.settings.gate)


REASONS_FILE = "gate/reasons.txt"  # the run's artifact with the gate's whole text


def fit(reasons: str, limit: int) -> str:
    from kaizen.tasks.registry import tracking

    return tracking.fit_lines(reasons, limit, f"the run's {REASONS_FILE}")


def decide(ws: Workspace, it: Iteration, challenger_version: str, evaluation,
           gate: GateDecision | None = None) -> Decision:
    """Move `champion` if the verdict (`gate`, else the gate's own) says so, and record the decision and its
    reasons either way. The verdict may come from `judge` and a person after it (tasks/evaluation/approval.py)."""
    from kaizen.tasks.registry import lineage, tracking

    gate = gate or judge(ws, it, evaluation)
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    reasons = "\n".join(gate.reasons)
    # The whole text goes with the run; its tags and the version's hold what fits (MLflow's limits), and say so.
    client.log_text(it.run_id, reasons + "\n", REASONS_FILE)
    # The intent first, on the run: a kill after the alias move below can still be completed from it.
    tracking.set_tags(client, it.run_id, {TAG["gate_reasons"]: fit(reasons, tracking.RUN_TAG_CHARS),
                                          TAG["challenger_version"]: challenger_version})
    previous = None
    if gate.promote:
        started_from = it.champion.version if it.champion else None
        try:
            with hold(ws, "champion", wait=True):  # a rollback and this move take turns
                previous = tracking.move_champion(client, name, challenger_version, started_from)  # the commit point
                # Under the same hold, so that two promotions never both read the records before either writes.
                # Without an evaluation (a caller's own verdict) there are no judged rows to record.
                if evaluation is not None:
                    record_promotion(ws, challenger_version, started_from, evaluation.paired)
        except tracking.ChampionMoved as exc:  # refused, and recorded why: the operator's move stands
            gate = GateDecision(False, [str(exc), *gate.reasons], f"{tags.Decision.REJECTED}: {exc}")
            reasons = "\n".join(gate.reasons)
            client.log_text(it.run_id, reasons + "\n", REASONS_FILE)
        kill_point("promote:moved")
    tracking.tag_version(client, name, challenger_version, {
        TAG["decision"]: gate.verdict, TAG["reasons"]: fit(reasons, tracking.VERSION_TAG_CHARS)})
    client.update_model_version(name, challenger_version, description=gate.summary)
    tracking.set_tags(client, it.run_id, {TAG["decision"]: gate.verdict,
                                          TAG["reasons"]: fit(reasons, tracking.RUN_TAG_CHARS)})
    champion = tracking.model_by_alias(client, name, tracking.CHAMPION)
    tracking.set_tags(client, it.run_id, {TAG["champion_version"]: champion.version if champion else ""})
    if champion is not None:
        lineage.log_champion_over_time(client, it.loop_run_id, len(it.batches), evaluation, gate.promote,
                                       iteration_run=it.run_id)
    kill_point("finish:before-ledger")  # tests: the decision is recorded, the batch not yet closed
    return Decision(gate, challenger_version, champion.version if champion else None, previous)
