"""The promotion gate's decisions, and the alias moves on a real MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.tasks import registry
from kaizen.tasks.promote import promotion_gate
from kaizen.tasks.record import TAG
from kaizen.tasks.settings import GateSettings

GATE = GateSettings(metric="accuracy", min_improvement=0.01, max_regression=0.02, min_score=0.6)


def test_bootstrap_is_promoted_when_it_reaches_min_score() -> None:
    decision = promotion_gate("b1", {"b1": 0.81}, None, GATE)
    assert decision.promote and decision.verdict == "promoted"
    assert any("bootstrap" in r for r in decision.reasons)


def test_bootstrap_below_min_score_is_rejected() -> None:
    decision = promotion_gate("b1", {"b1": 0.55}, None, GATE)
    assert not decision.promote
    assert "below min_score" in decision.reasons[0]


def test_better_on_new_batch_and_no_forgetting_is_promoted() -> None:
    decision = promotion_gate("b3", {"b1": 0.80, "b2": 0.85, "b3": 0.90},
                              {"b1": 0.81, "b2": 0.84, "b3": 0.70}, GATE)
    assert decision.promote, decision.reasons
    assert len(decision.reasons) == 4  # min_score, new batch, and one line per earlier batch


def test_regression_on_an_earlier_batch_is_rejected_and_named() -> None:
    decision = promotion_gate("b3", {"b1": 0.70, "b2": 0.85, "b3": 0.95},
                              {"b1": 0.80, "b2": 0.85, "b3": 0.70}, GATE)
    assert not decision.promote
    assert decision.reasons[0].startswith("accuracy on earlier b1")
    assert "max_regression" in decision.reasons[0]


def test_no_improvement_on_the_new_batch_is_rejected() -> None:
    decision = promotion_gate("b2", {"b1": 0.80, "b2": 0.805}, {"b1": 0.80, "b2": 0.80}, GATE)
    assert not decision.promote
    assert "min_improvement" in decision.reasons[0]


def test_a_drop_exactly_at_max_regression_passes_and_just_above_it_fails() -> None:
    assert GATE.max_regression == 0.02 and 0.80 - 0.78 > 0.02  # in floats the boundary drop is a hair above it
    at = promotion_gate("b2", {"b1": 0.78, "b2": 0.90}, {"b1": 0.80, "b2": 0.70}, GATE)
    assert at.promote, at.reasons
    above = promotion_gate("b2", {"b1": 0.7799, "b2": 0.90}, {"b1": 0.80, "b2": 0.70}, GATE)
    assert not above.promote and "max_regression" in above.reasons[0]


def test_a_gain_exactly_at_min_improvement_passes() -> None:
    assert 0.57 - 0.56 < 0.01  # in floats the boundary gain is a hair below it
    assert promotion_gate("b2", {"b1": 0.80, "b2": 0.57}, {"b1": 0.80, "b2": 0.56},
                          GATE.model_copy(update={"min_score": 0.5})).promote
    assert not promotion_gate("b2", {"b1": 0.80, "b2": 0.5699}, {"b1": 0.80, "b2": 0.56},
                              GATE.model_copy(update={"min_score": 0.5})).promote


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A workspace whose registry holds two versions of the tiny model (logging a model costs seconds: once)."""
    from kaizen.tasks.workspace import Workspace, init_workspace
    from tests.helpers import FAST, write_params

    root = init_workspace(tmp_path_factory.mktemp("registered") / "ws").root
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone)})
    ws = Workspace.open(root)
    client = registry.connect(ws)
    exp = registry.experiment_id(client, ws)
    for batch in ("batch-0001", "batch-0002"):
        registry.register_model(client, ws, client.create_run(exp).info.run_id, tiny_backbone, {TAG["batch"]: batch})
    return root


@pytest.fixture
def registered(registry_template: Path, tmp_path: Path):
    """A copy of the template: its own tracking store and aliases (the artifacts stay where they were logged)."""
    import shutil

    from kaizen.tasks.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(registry_template, root, symlinks=True)
    ws = Workspace.open(root)
    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    return ws, client, [registry.model_version(client, name, v) for v in ("1", "2")]


def test_register_aliases_challenger_and_champion_moves_keep_previous(registered) -> None:
    ws, client, (v1, v2) = registered
    name = ws.settings.model.registered_name
    assert (v1.version, v2.version) == ("1", "2")
    assert registry.model_by_alias(client, name, registry.CHALLENGER).version == "2"
    assert registry.model_by_alias(client, name, registry.CHAMPION) is None

    assert registry.move_champion(client, name, "1", started_from=None) is None
    assert registry.model_by_alias(client, name, registry.CHAMPION).version == "1"
    assert registry.model_by_alias(client, name, registry.PREVIOUS) is None

    assert registry.move_champion(client, name, "2", started_from="1") == "1"
    assert registry.model_by_alias(client, name, registry.CHAMPION).version == "2"
    assert registry.model_by_alias(client, name, registry.PREVIOUS).version == "1"
    assert registry.model_version(client, name, "2").tags[TAG["batch"]] == "batch-0002"


def test_a_registered_version_downloads_as_safetensors_without_pickles(registered, tmp_path: Path) -> None:
    ws, client, _ = registered
    local = registry.download_model(client, ws.settings.model.registered_name, "1", tmp_path / "v1")
    names = {p.name for p in local.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pkl", ".pt"))]


def test_a_download_killed_midway_is_never_taken_for_the_model(registered) -> None:
    import os
    import signal
    import subprocess
    import sys

    from transformers import AutoModelForSequenceClassification

    from kaizen.tasks.faults import ENV

    ws, _, _ = registered
    child = ("import sys; from kaizen.tasks import registry; from kaizen.tasks.workspace import Workspace; "
             "registry.local_model(Workspace.open(sys.argv[1]), '1')")
    killed = subprocess.run([sys.executable, "-c", child, str(ws.root)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, ENV: "download:copied@2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    cache = ws.runs_dir / "models" / ws.settings.model.registered_name
    assert not (cache / "v1").exists()  # only a hidden partial folder: nothing looks like a model

    local = registry.local_model(ws, "1")

    assert local == cache / "v1"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in local.iterdir()}
    assert AutoModelForSequenceClassification.from_pretrained(local).config.hidden_size == 32
    assert [p.name for p in cache.iterdir()] == ["v1"]  # the killed download's leftovers are gone



def test_a_rollback_during_an_iteration_is_not_undone_by_its_promotion(registered, tiny_backbone: Path) -> None:
    from kaizen.tasks.check import QualityResult, Scores
    from kaizen.tasks.evaluate import Evaluation
    from kaizen.tasks.operations import rollback
    from kaizen.tasks.promote import decide
    from kaizen.tasks.record import Iteration, loop_run_id

    ws, client, _ = registered
    name = ws.settings.model.registered_name
    registry.move_champion(client, name, "1", started_from=None)
    registry.move_champion(client, name, "2", started_from="1")
    exp = registry.experiment_id(client, ws)
    run_id = client.create_run(exp).info.run_id
    challenger = registry.register_model(client, ws, run_id, tiny_backbone, {TAG["batch"]: "batch-0003"})
    # The iteration started from v2 and trained v3; meanwhile an operator rolled back to v1.
    it = Iteration("batch-0003", run_id, "md5", "md5", registry.model_by_alias(client, name, registry.CHAMPION),
                   ("batch-0001", "batch-0002", "batch-0003"), "", loop_run_id(client, exp, ws))
    rollback(ws, "complaints about v2")
    better = {b: QualityResult(Scores(0.70, 0.70), Scores(0.90, 0.90), Path("-")) for b in it.batches}

    decision = decide(ws, it, challenger.version, Evaluation(None, better, Path("-")))

    assert registry.model_by_alias(client, name, registry.CHAMPION).version == "1"  # the rollback stands
    assert registry.model_by_alias(client, name, registry.PREVIOUS).version == "2"
    assert decision.gate.verdict == "rejected" and decision.champion_version == "1"
    reason = decision.gate.reasons[0]
    assert "the champion is v1, no longer v2" in reason and "kaizen rollback" in reason
    assert registry.model_version(client, name, challenger.version).tags[TAG["reasons"]].startswith(reason)
    assert client.get_run(run_id).data.tags[TAG["decision"]] == "rejected"


def test_a_crash_between_the_alias_moves_never_leaves_previous_equal_to_champion(registered) -> None:
    import os
    import signal
    import subprocess
    import sys

    from kaizen.tasks.faults import ENV
    from kaizen.tasks.recovery import recover_interrupted

    ws, client, (v1, v2) = registered
    name = ws.settings.model.registered_name

    def killed_between(code: str) -> None:
        child = subprocess.run(
            [sys.executable, "-c", "import sys; from kaizen.tasks import operations, registry; "
             "from kaizen.tasks.workspace import Workspace; ws = Workspace.open(sys.argv[1]); "
             "client = registry.connect(ws); name = ws.settings.model.registered_name; " + code, str(ws.root)],
            capture_output=True, text=True, timeout=300, env={**os.environ, ENV: "aliases:between"})
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]

    def aliases() -> tuple:
        return tuple(getattr(registry.model_by_alias(client, name, a), "version", None)
                     for a in (registry.CHAMPION, registry.PREVIOUS))

    registry.move_champion(client, name, "1", started_from=None)
    killed_between("registry.move_champion(client, name, '2', started_from='1')")  # a promotion
    assert aliases() == ("2", None)
    # The next run completes the killed iteration (its run names v1 as the parent) and sets what was missing.
    registry.set_tags(client, v2.run_id, {TAG["batch"]: "batch-0002", TAG["parent_version"]: "1", TAG["challenger_version"]: "2",
                                          TAG["gate_reasons"]: "better"})
    recover_interrupted(ws, "batch-0002")
    assert aliases() == ("2", "1")

    killed_between("operations.rollback(ws, 'bad answers')")  # a rollback to the previous champion
    assert aliases() == ("1", None)
