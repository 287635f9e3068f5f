"""No ratchet: each earlier batch is judged also against the best model it has had (tasks/evaluation/best.py), a
record kept in the shared ledger, written at promotion and read by check_quality for the gate."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kaizen.tasks.evaluation.best import (
    BestModel,
    best_models,
    improved,
    record_best_models,
    with_best_models,
)
from kaizen.tasks.evaluation.promote import PairedPredictions, promotion_gate
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import load_settings
from tests.evaluation.test_promote import rows

GATE = load_settings(template("params.yaml")).gate  # the shipped gate: max_regression 0.02, alpha 0.05
TODAY = GATE.model_copy(update={"judge_against_best": False})  # the gate before the check against the best
LABELS = tuple(("negative", "positive")[i % 2] for i in range(600))
OTHER = {"negative": "positive", "positive": "negative"}


def answers(wrong: int, labels: tuple[str, ...] = LABELS) -> tuple[str, ...]:
    """A model's answers: wrong on the first `wrong` rows, right on the rest."""
    return tuple(OTHER[y] if i < wrong else y for i, y in enumerate(labels))


NEW_BATCH = rows(100, 40, 5, 15)  # a clear gain on the new batch, every time


def test_a_loss_within_the_margin_of_the_champion_is_refused_when_beyond_it_against_the_best() -> None:
    # 600 rows of an earlier batch: the challenger loses 9 rows (1.5 points) to the champion, 27 (4.5) to v7.
    earlier = PairedPredictions(LABELS, answers(87), answers(78), best=answers(60), best_version="7")

    decision = promotion_gate("b2", {"b1": earlier, "b2": NEW_BATCH}, GATE)

    assert not decision.promote
    assert decision.reasons[0].startswith("accuracy on earlier b1 against the best model v7 it has had: challenger "
                                          "minus v7 -0.045"), decision.reasons
    assert "max_regression 0.02 is shown" in decision.reasons[0] and "Holm over 3 tests" in decision.reasons[0]
    assert decision.summary == f"rejected: {decision.reasons[0]}"
    assert any(r.startswith("accuracy on earlier b1: challenger minus champion -0.015") and "is not shown" in r
               for r in decision.reasons)
    assert promotion_gate("b2", {"b1": earlier, "b2": NEW_BATCH}, TODAY).promote  # today's gate sees no loss


def test_with_the_champion_the_best_model_a_batch_has_had_only_the_champion_is_judged_against() -> None:
    earlier = PairedPredictions(LABELS, answers(87), answers(78))  # best None: check_quality's mark of that case

    decision = promotion_gate("b2", {"b1": earlier, "b2": NEW_BATCH}, GATE)

    assert decision.promote, decision.reasons
    assert not any("best model" in r for r in decision.reasons) and "Holm over 2 tests" in decision.reasons[-1]


def test_a_chain_of_champions_each_a_little_worse_passes_todays_gate_and_not_the_check_against_the_best() -> None:
    """The ratchet: v2, v3 and v4 each lose 1.5 points (9 rows of 600) on the earlier batch b1 to the champion
    before them, every loss within the margin. Today's gate promotes all three; judged also against v1, the best
    b1 has had (4.5 points lost by v4, shown), the third is refused. v3's 3 points against v1 are not shown."""
    wrong = {"1": 60}  # each version's wrong rows on b1
    bootstrap = {"b1": PairedPredictions(LABELS, answers(60), None)}
    assert promotion_gate("b1", bootstrap, GATE).promote
    recorded = {b.batch_id: b for b in improved("1", None, bootstrap, {})}
    champion, today, judged = "1", [], []
    for step, version in ((2, "2"), (3, "3"), (4, "4")):
        wrong[version] = wrong[champion] + 9
        best = recorded["b1"].version
        earlier = PairedPredictions(LABELS, answers(wrong[version]), answers(wrong[champion]))
        with_best = replace(earlier, best=answers(wrong[best]), best_version=best) if best != champion else earlier
        today.append(promotion_gate(f"b{step}", {"b1": earlier, f"b{step}": NEW_BATCH}, TODAY).promote)
        paired = {"b1": with_best, f"b{step}": NEW_BATCH}
        decision = promotion_gate(f"b{step}", paired, GATE)
        judged.append(decision.promote)
        recorded |= {b.batch_id: b for b in improved(version, champion, paired, recorded)}
        champion = version  # the chain today's gate lets through

    assert today == [True, True, True]
    assert judged == [True, True, False]
    assert decision.reasons[0].startswith("accuracy on earlier b1 against the best model v1 it has had: challenger "
                                          "minus v1 -0.045") and " is shown " in decision.reasons[0]
    assert recorded["b1"] == BestModel("b1", "1", 0.9, 600)  # no later version beat it there


def test_the_best_model_of_a_new_batch_is_the_champion_when_the_promoted_challenger_scored_lower() -> None:
    paired = {"b1": rows(70, 20, 0, 10), "b2": rows(80, 2, 6, 12)}  # the champion 0.86 on b2, the challenger 0.82
    recorded = {"b1": BestModel("b1", "1", 0.99, 50)}  # the champion's, on other rows: it scored 0.70 on these

    changed = improved("2", "1", paired, recorded)

    assert changed == [BestModel("b1", "2", 0.9, 100), BestModel("b2", "1", 0.86, 100)]
    assert improved("3", "2", {"b1": rows(85, 0, 5, 10)}, {"b1": BestModel("b1", "1", 0.95, 100)}) == []


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return request.getfixturevalue("postgres")["create"](f"ledger_{uuid.uuid4().hex[:10]}")


def test_the_best_models_are_kept_in_the_ledger(location) -> None:
    with Ledger(location) as ledger:
        record_best_models(ledger, [BestModel("b1", "1", 0.8125, 160), BestModel("b2", "1", 0.75, 160)])
        record_best_models(ledger, [BestModel("b1", "3", 0.875, 160)])  # replaces b1's
    with Ledger(location) as ledger:  # another process, another machine: the same records
        assert best_models(ledger) == {"b1": BestModel("b1", "3", 0.875, 160), "b2": BestModel("b2", "1", 0.75, 160)}


def test_a_promotion_records_the_best_models_where_a_fresh_workspace_reads_them(registered) -> None:
    from kaizen.tasks.evaluation.evaluate import Evaluation
    from kaizen.tasks.evaluation.promote import decide
    from kaizen.tasks.registry.record import Iteration, loop_run_id
    from kaizen.tasks.workspace.layout import Workspace

    ws, client, _ = registered
    name = ws.settings.model.registered_name
    tracking.move_champion(client, name, "1", started_from=None)
    with Ledger(ws.ledger_db) as ledger:
        record_best_models(ledger, [BestModel("b1", "1", 0.75, 100)])
    exp = tracking.experiment_id(client, ws)
    run_id = client.create_run(exp).info.run_id
    it = Iteration("b3", run_id, "md5", "md5", tracking.model_by_alias(client, name, tracking.CHAMPION),
                   ("b1", "b2", "b3"), "", loop_run_id(client, exp, ws))
    paired = {"b1": rows(70, 20, 0, 10), "b2": rows(80, 2, 6, 12), "b3": rows(70, 20, 0, 10)}

    decision = decide(ws, it, "2", Evaluation(None, paired, Path("-")))

    assert decision.gate.promote and decision.champion_version == "2", decision.gate.reasons
    with Ledger(Workspace.open(ws.root).ledger_db) as ledger:
        assert best_models(ledger) == {"b1": BestModel("b1", "2", 0.9, 100), "b2": BestModel("b2", "1", 0.86, 100),
                                       "b3": BestModel("b3", "2", 0.9, 100)}


def keep(ws, version: str, batch: str, predicted: tuple[str, ...]) -> None:
    """A version's kept predictions on a batch's test split, as check_quality keeps them."""
    from kaizen.tasks.evaluation.predictions import prediction_file

    file = prediction_file(ws, version)
    split = pd.read_parquet(ws.split_file(batch, "test"))
    name = f"{batch}-test-{hashlib.md5(ws.split_file(batch, 'test').read_bytes()).hexdigest()}"
    frame = pd.DataFrame({"split": name, "row": np.arange(len(split)), "label": split["label"],
                          "predicted": list(predicted), "p_negative": 0.5, "p_positive": 0.5})
    file.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([pd.read_parquet(file), frame] if file.exists() else [frame]).to_parquet(file)


def test_check_quality_adds_the_kept_predictions_of_each_earlier_batchs_best_model(registered, tiny_backbone) -> None:
    """batch-0001's best model is v1, batch-0002's the champion v2: only batch-0001 gets v1's predictions, read
    from what v1 kept; rows v1 has none kept for are scored with v1's model."""
    import torch

    from kaizen.tasks.evaluation.evaluate import check_quality
    from kaizen.tasks.evaluation.predictions import prediction_file, predictions_on_each
    from kaizen.tasks.registry.record import Iteration, loop_run_id

    ws, client, _ = registered
    name = ws.settings.model.registered_name
    tracking.move_champion(client, name, "2", started_from=None)
    exp = tracking.experiment_id(client, ws)
    run_id = client.create_run(exp).info.run_id
    challenger = tracking.register_model(client, ws, run_id, tiny_backbone, {TAG["batch"]: "batch-0003"})
    batches = ("batch-0001", "batch-0002", "batch-0003")
    labels = LABELS[:20]
    for batch in batches:
        ws.split_file(batch, "test").parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": [f"{batch} review {i}" for i in range(20)], "label": labels}).to_parquet(
            ws.split_file(batch, "test"))
        for version, wrong in (("1", 2), ("2", 4), (challenger.version, 5)):
            keep(ws, version, batch, answers(wrong, labels))
    with Ledger(ws.ledger_db) as ledger:
        record_best_models(ledger, [BestModel("batch-0001", "1", 0.9, 20), BestModel("batch-0002", "2", 0.8, 20)])
    it = Iteration("batch-0003", run_id, "md5", "md5", tracking.model_by_alias(client, name, tracking.CHAMPION),
                   batches, "", loop_run_id(client, exp, ws))

    paired = check_quality(ws, it, SimpleNamespace(model=challenger, model_dir=tracking.local_model(ws, "3")),
                           tracking.local_model(ws, "2"), None).paired

    assert (paired["batch-0001"].best, paired["batch-0001"].best_version) == (answers(2, labels), "1")
    assert paired["batch-0002"].best is None and paired["batch-0003"].best is None
    assert paired["batch-0001"].champion == answers(4, labels)
    prediction_file(ws, "1").unlink()  # nothing kept of v1 (nor logged with its run): its model scores the rows
    judged = {b: np.arange(20) for b in batches}
    # v1 is the tiny encoder without a head: each load draws a new one, so both loads draw it from one seed
    torch.manual_seed(0)
    scored = with_best_models(ws, "2", paired, judged, "batch-0003")["batch-0001"]
    torch.manual_seed(0)
    expected = predictions_on_each(ws, tracking.local_model(ws, "1"), None, ["batch-0001"], "test")["batch-0001"]
    assert scored.best == tuple(expected["predicted"]) and scored.best_version == "1"
    assert prediction_file(ws, "1").exists()  # and kept, for the next time


def test_only_the_best_models_furthest_ahead_of_the_champion_are_consulted_up_to_the_bound(registered) -> None:
    """Three earlier batches, each with a best model of its own that is not the champion v2: v1 recorded 0.95 on
    batch-0001, v4 0.85 on batch-0002, v3 0.70 on batch-0003, where the champion has 0.8 on every batch. With
    gate.max_best_models 2, the two that lead it (v1 by 0.15, v4 by 0.05) are consulted, v3 (behind) is not; with
    0, all three."""
    from kaizen.tasks.workspace.layout import Workspace

    ws, _, _ = registered
    labels = LABELS[:20]
    batches = ("batch-0001", "batch-0002", "batch-0003", "batch-0004")
    best = {"batch-0001": ("1", 0.95, 1), "batch-0002": ("4", 0.85, 3), "batch-0003": ("3", 0.70, 6)}
    for batch in batches:
        ws.split_file(batch, "test").parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": [f"{batch} review {i}" for i in range(20)], "label": labels}).to_parquet(
            ws.split_file(batch, "test"))
    for batch, (version, _, wrong) in best.items():
        keep(ws, version, batch, answers(wrong, labels))
    with Ledger(ws.ledger_db) as ledger:
        record_best_models(ledger, [BestModel(b, v, accuracy, 20) for b, (v, accuracy, _) in best.items()])
    paired = {b: PairedPredictions(labels, answers(3, labels), answers(4, labels)) for b in batches}  # champion 0.8
    judged = {b: np.arange(20) for b in batches}

    def consulted(limit: int) -> dict[str, str | None]:
        bounded = Workspace(ws.root, ws.settings.with_overrides({"gate.max_best_models": limit}))
        return {b: rows.best_version for b, rows in with_best_models(bounded, "2", paired, judged, "batch-0004").items()}

    assert consulted(2) == {"batch-0001": "1", "batch-0002": "4", "batch-0003": None, "batch-0004": None}
    assert consulted(0) == {"batch-0001": "1", "batch-0002": "4", "batch-0003": "3", "batch-0004": None}
    assert with_best_models(ws, "2", paired, judged, "batch-0004")["batch-0001"].best == answers(1, labels)
