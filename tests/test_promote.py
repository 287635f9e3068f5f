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


def test_a_drop_exactly_at_max_regression_passes() -> None:
    decision = promotion_gate("b2", {"b1": 0.78, "b2": 0.90}, {"b1": 0.80, "b2": 0.70},
                              GATE.model_copy(update={"max_regression": 0.03}))
    assert decision.promote, decision.reasons


@pytest.fixture
def registered(make_workspace, tiny_backbone: Path):
    """A workspace whose registry holds two versions of the tiny model."""
    ws = make_workspace()
    client = registry.connect(ws)
    exp = registry.experiment_id(client, ws)
    versions = []
    for batch in ("batch-0001", "batch-0002"):
        run = client.create_run(exp)
        versions.append(registry.register_model(client, ws, run.info.run_id, tiny_backbone,
                                                 {TAG["batch"]: batch}))
    return ws, client, versions


def test_register_aliases_challenger_and_champion_moves_keep_previous(registered) -> None:
    ws, client, (v1, v2) = registered
    name = ws.settings.model.registered_name
    assert (v1.version, v2.version) == ("1", "2")
    assert registry.model_by_alias(client, name, registry.CHALLENGER).version == "2"
    assert registry.model_by_alias(client, name, registry.CHAMPION) is None

    assert registry.move_champion(client, name, "1") is None
    assert registry.model_by_alias(client, name, registry.CHAMPION).version == "1"
    assert registry.model_by_alias(client, name, registry.PREVIOUS) is None

    assert registry.move_champion(client, name, "2") == "1"
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

