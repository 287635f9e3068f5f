"""screening: what the loop checks about a new batch before it trains on it.

- Can a challenger be judged on it at all? A test split too small, or a batch of one label, cannot show a
  better classifier: the batch is not trained on, and says why.
- Are its labels to be trusted? Labels that agree with the champion less than chance (flipped), or about as
  much as chance while the batch's own texts do not predict them either (random), are suspect: the batch is
  not trained on, never enters replay and is no yardstick for later gates, until an operator says otherwise
  (`kaizen batch trust`). Chance agreement with labels the texts do predict is a new domain: trusted.
- Is training worth it? Not when the champion already does well on the batch and nothing drifted.
Each verdict is recorded on the iteration's run; a suspect batch also in the ledger and as a Prefect event.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.evaluation import grown, stats
from kaizen.tasks.evaluation.evaluate import new_batch_rows
from kaizen.tasks.evaluation.predictions import predictions_on, predictions_on_splits
from kaizen.tasks.ingest.ledger import SUSPECT, TRUSTED, Ledger
from kaizen.tasks.model.predict import scores
from kaizen.tasks.registry.record import Iteration, score_metric
from kaizen.tasks.registry.tags import TAG, Decision
from kaizen.tasks.workspace.layout import Workspace

LEARNABILITY_ROWS = 5000  # rows of a batch that the learnability check reads at most


def unusable_reason(ws: Workspace, batch_id: str) -> str | None:
    """Why no challenger can be judged on this batch; None when one can. A label with a single row is only
    remarked on: it trains, it cannot be tested."""
    labels = new_batch_rows(ws, batch_id)["label"]
    test_rows = len(pd.read_parquet(ws.split_file(batch_id, "test")))
    if labels.nunique() < 2:
        return (f"{batch_id} holds only {labels.iloc[0]!r} rows ({len(labels)}): a batch of one label cannot show "
                "a better classifier, so it is not trained on (its rows still join the data and the replay pool)")
    if test_rows < ws.settings.gate.min_test_rows:
        return (f"{batch_id}'s test split holds {test_rows} rows, fewer than gate.min_test_rows "
                f"{ws.settings.gate.min_test_rows}: too few to judge a challenger, so it is not trained on "
                "(raise data.min_batch_rows or preprocess.test_fraction)")
    return None


def screen(ws: Workspace, it: Iteration) -> str | None:
    """The step: why the batch cannot be trained on (None when it can); labels with a single row, which can
    train but never be tested, are remarked on the run."""
    from kaizen.tasks.registry import tracking

    counts = new_batch_rows(ws, it.batch_id)["label"].value_counts()
    single = sorted(str(label) for label, n in counts.items() if n == 1)
    if single:
        tracking.set_tags(tracking.connect(ws), it.run_id, {TAG["remarks"]: (
            f"label(s) {single} have a single row in {it.batch_id}: trained on, never tested")})
    return unusable_reason(ws, it.batch_id)


@dataclass(frozen=True)
class LabelVerdict:
    trusted: bool
    reason: str
    agreement: stats.Agreement | None = None  # None when there was nothing to judge against


def _champion_view(ws: Workspace, it: Iteration, champion_dir: Path) -> pd.DataFrame:
    """The champion's predictions on the new batch's validation and test rows (never trained on by anyone)."""
    both = predictions_on_splits(ws, champion_dir, it.champion, [(it.batch_id, "val"), (it.batch_id, "test")])
    return pd.concat(both.values(), ignore_index=True)  # one model load for the two


def judge_labels(ws: Workspace, it: Iteration, champion_dir: Path | None) -> LabelVerdict:
    """Trust the batch's labels unless they disagree with the champion beyond doubt (or an operator said so);
    the verdict goes to the ledger and, with its numbers, to the run."""
    from kaizen.tasks.registry import tracking

    with Ledger(ws.ledger_db) as ledger:
        record = next(b for b in ledger.batches() if b.batch_id == it.batch_id)
    if record.trust_by and record.trust_by != "loop":  # an operator's word stands
        return LabelVerdict(record.trust == TRUSTED, f"{record.trust} by {record.trust_by}: {record.trust_reason}")
    if it.champion is None or champion_dir is None:
        return _settle(ws, it, LabelVerdict(True, "no champion yet to judge the labels against"))
    view, trust = grown.rows_it_knows(_champion_view(ws, it, champion_dir), champion_dir), ws.settings.trust
    if view.empty:  # every row carries a label appended since the champion was trained
        return _settle(ws, it, LabelVerdict(True, "the champion knows none of the batch's labels: nothing to judge"))
    own = view.apply(lambda row: row[f"p_{row['label']}"], axis=1).to_numpy()
    agreement = stats.label_agreement(list(view["label"]), list(view["predicted"]), own,
                                      confident=trust.confident, resamples=ws.settings.gate.resamples // 2)
    learnable = None
    if agreement.kappa >= 0.0 and agreement.kappa_high < trust.min_kappa:
        # About chance: random labels, or a domain the champion does not know yet. The batch's own texts tell;
        # a few thousand rows tell as well as a million, at a bounded cost.
        rows = new_batch_rows(ws, it.batch_id)
        if rows["label"].value_counts().min() > 1:
            rows = rows.sample(n=min(len(rows), LEARNABILITY_ROWS), random_state=ws.settings.preprocess.seed)
            learnable = stats.learnability(rows["text"].tolist(), rows["label"].tolist(),
                                           resamples=ws.settings.gate.resamples // 2)
    verdict = label_verdict(agreement, learnable, trust, it.champion.version)
    client = tracking.connect(ws)
    tracking.log_metrics(client, it.run_id, {
        "labels.agreement": agreement.agreement, "labels.kappa": agreement.kappa,
        "labels.kappa_high": agreement.kappa_high, "labels.confident_issues": agreement.confident_issues,
        **({"labels.learnable_kappa": learnable.kappa, "labels.learnable_kappa_low": learnable.kappa_low}
           if learnable is not None else {})})
    return _settle(ws, it, verdict)


def label_verdict(agreement: stats.Agreement, learnable: stats.Learnability | None, trust, champion: str
                  ) -> LabelVerdict:
    """Suspect when the champion agrees with the labels less than chance (flipped labels), or no better than
    chance while the labels cannot be predicted from the batch's own texts either (random labels), or when it
    rejects too many of them with confidence. Agreement about chance with labels that follow the texts is a
    domain the champion does not know yet: trusted (a first airline batch made a champion that agreed with
    the labels of the fine-food batch after it no better than that)."""
    facts = (f"the champion v{champion} agrees with {agreement.agreement:.1%} of {agreement.rows} "
             f"labels, Cohen's kappa {agreement.kappa:+.2f} (95% upper bound {agreement.kappa_high:+.2f}), "
             f"{agreement.confident_issues:.1%} confident label issues")
    if learnable is not None:
        facts += (f"; predicted from the batch's own texts (TF-IDF + logistic regression, out of fold) with kappa "
                  f"{learnable.kappa:+.2f} (95% lower bound {learnable.kappa_low:+.2f})")
    if agreement.kappa_high < trust.min_kappa and agreement.kappa < 0:
        return LabelVerdict(False, f"labels suspect: {facts}; kappa is below trust.min_kappa {trust.min_kappa:g} "
                                   "and below chance (flipped labels?)", agreement)
    if agreement.kappa_high < trust.min_kappa and (learnable is None or not learnable.learnable):
        why = ("the texts do not predict the labels either" if learnable is not None else
               "whether the batch's texts predict its labels was not checked (a label with a single row)")
        return LabelVerdict(False, f"labels suspect: {facts}; kappa is below trust.min_kappa {trust.min_kappa:g} "
                                   f"and {why} (random labels?)", agreement)
    if agreement.confident_issues > trust.max_confident_issues:
        return LabelVerdict(False, f"labels suspect: {facts}; more than trust.max_confident_issues "
                                   f"{trust.max_confident_issues:.0%} confident issues", agreement)
    if agreement.kappa_high < trust.min_kappa:
        return LabelVerdict(True, f"labels trusted: {facts}; the champion agrees about as chance does, but the "
                                  "texts predict the labels: a domain it does not know yet", agreement)
    return LabelVerdict(True, f"labels trusted: {facts}", agreement)


def _settle(ws: Workspace, it: Iteration, verdict: LabelVerdict) -> LabelVerdict:
    with Ledger(ws.ledger_db) as ledger:
        ledger.set_trust(it.batch_id, TRUSTED if verdict.trusted else SUSPECT, verdict.reason, "loop")
    return verdict


@dataclass(frozen=True)
class TrainingNeed:
    train: bool
    reason: str
    champion_score: float | None  # the gate's metric of the champion on the new batch's test split


def worth_training(ws: Workspace, it: Iteration, champion_dir: Path | None, drift, force: bool) -> TrainingNeed:
    """Training pays unless the champion already scores above the threshold on the new batch and nothing drifted."""
    if it.champion is None or champion_dir is None:
        return TrainingNeed(True, "no champion yet: bootstrap", None)
    test = predictions_on(ws, champion_dir, it.champion, it.batch_id, "test")
    score = scores(np.asarray(test["label"]), np.asarray(test["predicted"]))[ws.settings.gate.metric]
    threshold, metric = ws.settings.train.skip_if_champion_above, ws.settings.gate.metric
    drifted = drift is not None and drift.drifted
    if force:
        return TrainingNeed(True, "training forced", score)
    if score > threshold and not drifted:
        return TrainingNeed(False, f"champion {metric} {score:.4f} on {it.batch_id} is above "
                                   f"skip_if_champion_above {threshold:.4f} and no drift was detected", score)
    why = "drift detected" if drifted else f"champion {metric} {score:.4f} <= {threshold:.4f}"
    return TrainingNeed(True, why, score)


def record_without_training(ws: Workspace, it: Iteration, decision: Decision, reason: str,
                            champion_score: float | None = None) -> None:
    """Record on the run why the iteration trains nothing (skipped or suspect; the flow announces a suspect
    batch with the other decisions, tasks/notify/alerts.py)."""
    from kaizen.tasks.registry import tracking

    client = tracking.connect(ws)
    tracking.set_tags(client, it.run_id, {TAG["decision"]: decision, TAG["reasons"]: reason,
                                          TAG["champion_version"]: it.champion.version if it.champion else ""})
    if champion_score is not None:
        tracking.log_metrics(client, it.run_id,
                             {score_metric("champion", it.batch_id, ws.settings.gate.metric): champion_score})
