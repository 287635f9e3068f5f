"""The promotion gate's decisions, and the alias moves on a real MLflow registry."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kaizen.tasks.evaluation.promote import PairedPredictions, promotion_gate
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import GateSettings, load_settings

GATE = GateSettings(metric="accuracy", min_improvement=0.01, max_regression=0.02, min_score=0.6,
                    improvement_alpha=0.2, alpha=0.05, resamples=2000, min_test_rows=20,
                    require_approval=False, approval_timeout_seconds=3600)


def rows(both: int, wins: int, losses: int, neither: int, champion: bool = True) -> PairedPredictions:
    """A test split where both models are right on `both` rows, only the challenger on `wins`, only the
    champion on `losses`, neither on `neither` (labels alternate, wrong answers are the other label)."""
    n = both + wins + losses + neither
    labels = [("negative", "positive")[i % 2] for i in range(n)]
    other = {"negative": "positive", "positive": "negative"}
    kinds = ["both"] * both + ["win"] * wins + ["loss"] * losses + ["neither"] * neither
    new = [y if k in ("both", "win") else other[y] for y, k in zip(labels, kinds, strict=True)]
    old = [y if k in ("both", "loss") else other[y] for y, k in zip(labels, kinds, strict=True)]
    return PairedPredictions(tuple(labels), tuple(new), tuple(old) if champion else None)


def test_bootstrap_is_promoted_when_it_reaches_min_score() -> None:
    decision = promotion_gate("b1", {"b1": rows(81, 0, 0, 19, champion=False)}, GATE)
    assert decision.promote and decision.verdict == "promoted"
    assert any("bootstrap" in r for r in decision.reasons)


def test_bootstrap_below_min_score_is_rejected() -> None:
    decision = promotion_gate("b1", {"b1": rows(55, 0, 0, 45, champion=False)}, GATE)
    assert not decision.promote
    assert "below min_score" in decision.reasons[0] and decision.summary.startswith("rejected: ")


def test_a_constant_predictor_is_never_promoted_not_even_at_bootstrap() -> None:
    labels = ("negative",) * 70 + ("positive",) * 30
    constant = PairedPredictions(labels, ("negative",) * 100, None)  # 0.70 accuracy, above min_score
    decision = promotion_gate("b1", {"b1": constant}, GATE)
    assert not decision.promote and "constant predictor" in decision.reasons[0]
    later = PairedPredictions(labels, ("negative",) * 100, ("positive",) * 100)
    assert not promotion_gate("b2", {"b2": later}, GATE).promote


def test_a_clear_gain_and_no_forgetting_is_promoted_with_every_check_recorded() -> None:
    decision = promotion_gate("b3", {"b1": rows(140, 6, 4, 10), "b2": rows(150, 5, 5, 0), "b3": rows(120, 50, 5, 25)},
                              GATE)
    assert decision.promote, decision.reasons
    assert len(decision.reasons) == 5  # min_score, the new batch, two earlier batches, and the pooled check
    assert decision.summary.startswith("promoted: accuracy on the new batch b3")
    assert "McNemar" in decision.summary and "[" in decision.summary  # the estimate comes with its interval
    assert any(r.startswith("accuracy on all earlier batches pooled") for r in decision.reasons)


def test_a_small_loss_within_the_noise_is_not_a_reason_to_refuse() -> None:
    # The case: 6 net rows lost of 160 on the movie batch; no evidence of forgetting.
    decision = promotion_gate("b2", {"b1": rows(120, 5, 11, 24), "b2": rows(100, 40, 5, 15)}, GATE)
    assert decision.promote, decision.reasons
    assert any("earlier b1" in r and "is not shown" in r for r in decision.reasons)


def test_a_loss_shown_beyond_the_margin_is_refused_and_named() -> None:
    decision = promotion_gate("b2", {"b1": rows(200, 4, 46, 50), "b2": rows(100, 40, 5, 15)}, GATE)
    assert not decision.promote
    assert decision.reasons[0].startswith("accuracy on earlier b1") and "max_regression 0.02 is shown" in \
        decision.reasons[0]
    assert decision.summary == f"rejected: {decision.reasons[0]}"
    forgiving = promotion_gate("b2", {"b1": rows(200, 4, 46, 50), "b2": rows(100, 40, 5, 15)},
                               GATE.model_copy(update={"max_regression": 0.3}))
    assert forgiving.promote  # the same loss inside a wider margin


def test_many_small_losses_are_caught_by_the_pooled_check() -> None:
    earlier = {f"b{i}": rows(120, 4, 14, 22) for i in range(1, 7)}  # each alone: not shown (p 0.048 > 0.05 / 7)
    decision = promotion_gate("b7", {**earlier, "b7": rows(100, 40, 5, 15)}, GATE)
    assert not decision.promote
    assert [r for r in decision.reasons if "is shown" in r] == [decision.reasons[0]]
    assert decision.reasons[0].startswith("accuracy on all earlier batches pooled")


def test_a_gain_the_test_split_cannot_tell_from_noise_is_not_an_improvement() -> None:
    decision = promotion_gate("b2", {"b1": rows(150, 5, 5, 0), "b2": rows(150, 6, 4, 40)}, GATE)
    assert not decision.promote
    assert "no improvement shown" in decision.reasons[0]
    lenient = GATE.model_copy(update={"improvement_alpha": 1.0})
    assert promotion_gate("b2", {"b1": rows(150, 5, 5, 0), "b2": rows(150, 6, 4, 40)}, lenient).promote


def test_no_gain_at_all_is_rejected_whatever_the_test_says() -> None:
    decision = promotion_gate("b2", {"b2": rows(150, 10, 10, 30)}, GATE.model_copy(update={"improvement_alpha": 1.0}))
    assert not decision.promote and "min_improvement +0.010" in decision.reasons[0]


def test_a_gain_exactly_at_min_improvement_passes() -> None:
    # 41 won and 38 lost of 300 rows is a gain of exactly 0.01; 40 and 38 is 0.0067.
    at = promotion_gate("b2", {"b2": rows(200, 41, 38, 21)}, GATE.model_copy(update={"improvement_alpha": 1.0}))
    assert at.promote, at.reasons
    below = promotion_gate("b2", {"b2": rows(200, 40, 38, 22)}, GATE.model_copy(update={"improvement_alpha": 1.0}))
    assert not below.promote and "min_improvement" in below.reasons[0]


def test_register_aliases_challenger_and_champion_moves_keep_previous(registered) -> None:
    ws, client, (v1, v2) = registered
    name = ws.settings.model.registered_name
    assert (v1.version, v2.version) == ("1", "2")
    assert tracking.model_by_alias(client, name, tracking.CHALLENGER).version == "2"
    assert tracking.model_by_alias(client, name, tracking.CHAMPION) is None

    assert tracking.move_champion(client, name, "1", started_from=None) is None
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "1"
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS) is None

    assert tracking.move_champion(client, name, "2", started_from="1") == "1"
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "2"
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS).version == "1"
    assert tracking.model_version(client, name, "2").tags[TAG["batch"]] == "batch-0002"


def test_a_registered_version_downloads_as_safetensors_without_pickles(registered, tmp_path: Path) -> None:
    ws, client, _ = registered
    local = tracking.download_model(client, ws.settings.model.registered_name, "1", tmp_path / "v1")
    names = {p.name for p in local.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt"))]


def test_a_download_killed_midway_is_never_taken_for_the_model(registered) -> None:
    import os
    import signal
    import subprocess
    import sys

    from transformers import AutoModelForSequenceClassification

    from kaizen.tasks.workspace.faults import ENV

    ws, _, _ = registered
    child = ("import sys; from kaizen.tasks.registry import tracking; from kaizen.tasks.workspace.layout import Workspace; "
             "tracking.local_model(Workspace.open(sys.argv[1]), '1')")
    killed = subprocess.run([sys.executable, "-c", child, str(ws.root)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, ENV: "download:copied@2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cache = ws.runs_dir / "models" / ws.settings.model.registered_name
    assert not (cache / "v1").exists()  # only a hidden partial folder: nothing looks like a model

    local = tracking.local_model(ws, "1")

    assert local == cache / "v1"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in local.iterdir()}
    assert AutoModelForSequenceClassification.from_pretrained(local).config.hidden_size == 32
    assert [p.name for p in cache.iterdir()] == ["v1"]  # the killed download's leftovers are gone



def test_a_rollback_during_an_iteration_is_not_undone_by_its_promotion(registered, tiny_backbone: Path) -> None:
    from kaizen.tasks.evaluation.best import best_models
    from kaizen.tasks.evaluation.evaluate import Evaluation
    from kaizen.tasks.evaluation.promote import decide
    from kaizen.tasks.ingest.ledger import Ledger
    from kaizen.tasks.operate.operations import rollback
    from kaizen.tasks.registry.record import Iteration, loop_run_id

    ws, client, _ = registered
    name = ws.settings.model.registered_name
    tracking.move_champion(client, name, "1", started_from=None)
    tracking.move_champion(client, name, "2", started_from="1")
    exp = tracking.experiment_id(client, ws)
    run_id = client.create_run(exp).info.run_id
    challenger = tracking.register_model(client, ws, run_id, tiny_backbone, {TAG["batch"]: "batch-0003"})
    # The iteration started from v2 and trained v3; meanwhile an operator rolled back to v1.
    it = Iteration("batch-0003", run_id, "md5", "md5", tracking.model_by_alias(client, name, tracking.CHAMPION),
                   ("batch-0001", "batch-0002", "batch-0003"), "", loop_run_id(client, exp, ws))
    rollback(ws, "complaints about v2")
    better = {b: rows(70, 20, 0, 10) for b in it.batches}  # champion 0.70, challenger 0.90 on each

    decision = decide(ws, it, challenger.version, Evaluation(None, better, Path("-")))

    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "1"  # the rollback stands
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS).version == "2"
    assert decision.gate.verdict == "rejected" and decision.champion_version == "1"
    reason = decision.gate.reasons[0]
    assert "the champion is v1, no longer v2" in reason and "kaizen rollback" in reason
    assert tracking.model_version(client, name, challenger.version).tags[TAG["reasons"]].startswith(reason)
    assert client.get_run(run_id).data.tags[TAG["decision"]] == "rejected"
    with Ledger(ws.ledger_db) as ledger:
        assert best_models(ledger) == {}  # v3 never became champion: no batch's best model


def test_a_crash_between_the_alias_moves_never_leaves_previous_equal_to_champion(registered) -> None:
    import os
    import signal
    import subprocess
    import sys

    from kaizen.tasks.operate.recovery import recover_interrupted
    from kaizen.tasks.workspace.faults import ENV

    ws, client, (v1, v2) = registered
    name = ws.settings.model.registered_name

    def killed_between(code: str) -> None:
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from kaizen.tasks.operate import operations; from kaizen.tasks.registry import tracking; "
             "from kaizen.tasks.workspace.layout import Workspace; ws = Workspace.open(sys.argv[1]); "
             "client = tracking.connect(ws); name = ws.settings.model.registered_name; " + code, str(ws.root)],
            capture_output=True, text=True, timeout=300, env={**os.environ, ENV: "aliases:between"})
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]

    def aliases() -> tuple:
        return tuple(getattr(tracking.model_by_alias(client, name, a), "version", None)
                     for a in (tracking.CHAMPION, tracking.PREVIOUS))

    tracking.move_champion(client, name, "1", started_from=None)
    killed_between("tracking.move_champion(client, name, '2', started_from='1')")  # a promotion
    assert aliases() == ("2", None)
    # The next run completes the killed iteration (its run names v1 as the parent) and sets what was missing.
    tracking.set_tags(client, v2.run_id, {TAG["batch"]: "batch-0002", TAG["parent_version"]: "1", TAG["challenger_version"]: "2",
                                          TAG["gate_reasons"]: "better"})
    recover_interrupted(ws, "batch-0002")
    assert aliases() == ("2", "1")

    killed_between("operations.rollback(ws, 'bad answers')")  # a rollback to the previous champion
    assert aliases() == ("1", None)


SHIPPED_GATE = load_settings(template("params.yaml")).gate


def test_the_shipped_gate_does_not_ask_a_new_batch_for_a_gain_its_split_cannot_show() -> None:
    """bench/README.md's case: fine food, 7 rows won and 10 lost of 160 by a challenger 4.7 points better on
    2,000 held-out rows. The shipped gate promotes it (no loss beyond the margin is shown); a gate that requires
    an improvement refuses it."""
    paired = {"b1": rows(140, 8, 8, 4), "b2": rows(150, 5, 5, 0), "b3": rows(120, 7, 10, 23)}
    assert not SHIPPED_GATE.require_improvement
    shipped = promotion_gate("b3", paired, SHIPPED_GATE)
    assert shipped.promote, shipped.reasons
    assert shipped.summary.startswith("promoted: accuracy on the new batch b3: challenger minus champion -0.019")
    assert "a loss beyond max_regression 0.02 is not shown" in shipped.summary and "Holm over 4 tests" in \
        shipped.summary  # the new batch, two earlier ones, the pooled check
    assert any("McNemar's exact test" in r and "p=0.834" in r and "not required" in r for r in shipped.reasons)
    strict = promotion_gate("b3", paired, SHIPPED_GATE.model_copy(update={"require_improvement": True}))
    assert not strict.promote and "no improvement shown" in strict.reasons[0]


def test_a_loss_shown_on_the_new_batch_is_refused_when_no_improvement_is_required() -> None:
    decision = promotion_gate("b2", {"b1": rows(140, 8, 8, 4), "b2": rows(100, 5, 40, 15)}, SHIPPED_GATE)
    assert not decision.promote
    assert decision.summary.startswith("rejected: accuracy on the new batch b2: challenger minus champion -0.219")
    assert "max_regression 0.02 is shown" in decision.summary


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 200))
def test_the_shipped_gate_refuses_a_new_batch_only_for_a_loss_beyond_the_margin(wins, losses, both):
    """params.yaml's gate on a new batch alone: a point estimate within max_regression is never a shown loss;
    one more than three standard errors beyond it always is. (Between the two the bootstrap decides.)"""
    decision = promotion_gate("b2", {"b2": rows(both + 60, wins, losses, 0)}, SHIPPED_GATE)
    n = both + 60 + wins + losses
    estimate = (wins - losses) / n
    se = math.sqrt(wins + losses - (wins - losses) ** 2 / n) / n
    margin = SHIPPED_GATE.max_regression
    if estimate >= -margin:  # (60 + both + wins) / n is then above min_score 0.6 too
        assert decision.promote, decision.reasons
    elif estimate < -margin - 3 * se:  # the loss is shown, whether or not min_score failed first (and leads)
        assert not decision.promote and any(" is shown " in r for r in decision.reasons), decision.reasons
