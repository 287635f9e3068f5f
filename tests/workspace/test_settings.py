"""tasks.settings: the repository's params.yaml, and every way a params file can be wrong."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kaizen.tasks.workspace.settings import (
    DataSettings,
    Settings,
    SettingsError,
    TrainSettings,
    load_settings,
)
from tests.support.workspaces import REPO

PARAMS = REPO / "params.yaml"


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(PARAMS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(PARAMS)


def write(tmp_path: Path, params: Any) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def declared_type(annotation: Any) -> type:
    """The Python type a setting's annotation asks for: `float`, `tuple` for `tuple[str, ...]`, `str` for a Literal
    of strings."""
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return typing.get_origin(annotation) or annotation


def changed(raw: dict, dotted: str, value: Any) -> dict:
    """A deep copy of `raw` with one dotted key set."""
    params = {section: dict(values) for section, values in raw.items()}
    section, key = dotted.split(".")
    params[section][key] = value
    return params


# --- the repository's file ------------------------------------------------------------------------------


def test_the_repository_params_load_with_every_value(settings: Settings, raw: dict) -> None:
    assert list(raw) == list(Settings.model_fields)  # every section of the model, in its order, none extra
    for section, values in raw.items():
        model = getattr(settings, section)
        fields = type(model).model_fields
        assert list(fields) == list(values), section  # no key missing, none extra
        for key, value in values.items():
            loaded = getattr(model, key)
            assert (list(loaded) if isinstance(loaded, tuple) else loaded) == value, f"{section}.{key}"
            # Of the type its field declares, as the rest of the code uses it (YAML gives an int for `1`, a list
            # for `[a, b]`): a float is a float, a tuple a tuple, and a flag no number.
            kind = declared_type(fields[key].annotation)
            assert isinstance(loaded, kind) and (kind is bool or not isinstance(loaded, bool)), (
                f"{section}.{key}: {loaded!r} is no {kind.__name__}")


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="frozen"):
        settings.train.epochs = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        settings.train = settings.train  # type: ignore[misc]
    assert isinstance(settings.data.labels, tuple)  # not a list that could be changed in place
    assert settings.train.epochs == load_settings(PARAMS).train.epochs
    assert hash(settings.data) == hash(load_settings(PARAMS).data)  # frozen models hash by value


# --- bad values name their dotted key -------------------------------------------------------------------


@pytest.mark.parametrize(("dotted", "value"), [
    ("gate.max_regression", -1),
    ("gate.metric", "auc"),
    ("gate.min_score", 1.5),
    ("train.device", "tpu"),
    ("train.epochs", 0),
    ("train.epochs", "three"),
    ("train.learning_rate", 0),
    ("data.labels", ["negative", "positive", "negative"]),
    ("data.labels", ["positive"]),
    ("data.labels", "positive"),
    ("data.min_batch_rows", 0),
    ("data.max_text_chars", -5),
    ("data.text_column", ""),
    ("preprocess.val_fraction", 0.5),
    ("preprocess.test_fraction", 0),
    ("model.registered_name", "has spaces!"),
    ("model.max_length", 4096),
    ("drift.threshold", 0),
    ("replay.ratio", -0.1),
    ("demo.rows_per_batch", -1),
    ("schedule.poll_seconds", 0),
    ("servers.prefect_port", 70000),
    ("servers.mlflow_port", 0),
    ("servers.startup_timeout_seconds", 1),
    ("train.processes", 0),
    ("storage.landing", ""),
    ("storage.tracking_uri", "mlruns"),
    ("storage.ledger", "sqlite:///ledger.db"),
    ("storage.dvc_remote", "relative/remote"),
    ("gate.approval_timeout_seconds", 0),
    ("serving.port", 0),
    ("serving.chunk_rows", 0),
    ("alerts.webhook_url", "hooks.slack.com/no-scheme"),
])
def test_a_bad_value_is_named_by_its_dotted_key(tmp_path: Path, raw: dict, dotted: str, value: Any) -> None:
    path = write(tmp_path, changed(raw, dotted, value))
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert f"{dotted}: " in message, message
    assert f"got {value!r}" in message, message


def test_duplicate_labels_say_so(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, changed(raw, "data.labels", ["negative", "positive", "negative"]))
    with pytest.raises(SettingsError, match=r"data\.labels: .*labels must be distinct"):
        load_settings(path)


def test_server_ports_must_differ(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, changed(raw, "servers.mlflow_port", raw["servers"]["prefect_port"]))
    with pytest.raises(SettingsError, match=r"servers: .*prefect_port and mlflow_port must differ"):
        load_settings(path)


def test_text_and_label_columns_must_differ(tmp_path: Path, raw: dict) -> None:
    path = write(tmp_path, changed(raw, "data.label_column", "text"))
    with pytest.raises(SettingsError, match=r"data: .*text_column and label_column must differ"):
        load_settings(path)


def test_an_unknown_key_or_section_is_named(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(SettingsError, match=r"train\.epoch: Extra inputs are not permitted"):
        load_settings(write(tmp_path, changed(raw, "train.epoch", 3)))  # a typo of train.epochs
    with pytest.raises(SettingsError, match=r"extras: Extra inputs are not permitted"):
        load_settings(write(tmp_path, {**raw, "extras": {"a": 1}}))


def test_a_missing_section_or_key_is_named(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(SettingsError, match=r"gate: Field required"):
        load_settings(write(tmp_path, {k: v for k, v in raw.items() if k != "gate"}))
    train = {k: v for k, v in raw["train"].items() if k != "device"}
    with pytest.raises(SettingsError, match=r"train\.device: Field required"):
        load_settings(write(tmp_path, {**raw, "train": train}))
    with pytest.raises(SettingsError, match=r"demo: Input should be a valid dictionary"):
        load_settings(write(tmp_path, {**raw, "demo": None}))  # "demo:" with nothing under it


def test_a_workspace_from_before_require_improvement_keeps_the_gate_it_had(tmp_path: Path, raw: dict) -> None:
    """Its params.yaml has no gate.require_improvement: the gate it was made with asked for a gain."""
    gate = {k: v for k, v in raw["gate"].items() if k != "require_improvement"}
    assert load_settings(write(tmp_path, {**raw, "gate": gate})).gate.require_improvement is True
    for given in (True, False):  # a file that says it is read as it says, whatever the fallback
        assert load_settings(write(tmp_path, {**raw, "gate": {**gate, "require_improvement": given}})
                             ).gate.require_improvement is given


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path, raw: dict) -> None:
    params = changed(changed(raw, "train.device", "tpu"), "gate.max_regression", -1)
    with pytest.raises(SettingsError) as caught:
        load_settings(write(tmp_path, params))
    assert "train.device" in str(caught.value) and "gate.max_regression" in str(caught.value)


# --- files that are not params at all -------------------------------------------------------------------


def test_invalid_yaml_is_reported_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  labels: [negative, positive\n  landing: data/landing\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="not valid YAML") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"params\.yaml: no such file"):
        load_settings(tmp_path / "params.yaml")


@pytest.mark.parametrize("content", [b"", b"- data\n- train\n", b"just a string\n"])
def test_a_file_that_is_not_a_mapping_is_reported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(SettingsError, match="expected a mapping of sections"):
        load_settings(path)


def test_an_unreadable_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(tmp_path)  # a folder
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xff\xfe data: \x00\x81")
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(path)


# --- overrides ------------------------------------------------------------------------------------------


def test_overrides_make_a_validated_copy(settings: Settings) -> None:
    faster = settings.with_overrides({"train.epochs": 3, "data.labels": ["neg", "pos"], "train.device": "cpu"})
    assert (faster.train.epochs, faster.data.labels, faster.train.device) == (3, ("neg", "pos"), "cpu")
    assert isinstance(faster.train, TrainSettings) and isinstance(faster.data, DataSettings)
    assert settings.train.epochs == load_settings(PARAMS).train.epochs  # the original is untouched
    assert faster.gate == settings.gate and faster.model == settings.model
    assert faster.train.model_dump(exclude={"epochs", "device"}) == settings.train.model_dump(
        exclude={"epochs", "device"})
    assert settings.with_overrides({}) == settings


@pytest.mark.parametrize("dotted", ["train.epoch", "nosuch.epochs", "train", "train.epochs.inner", ""])
def test_an_unknown_override_key_raises(settings: Settings, dotted: str) -> None:
    with pytest.raises(SettingsError, match=f"unknown setting {dotted!r}"):
        settings.with_overrides({dotted: 3})


def test_a_bad_override_value_is_named(settings: Settings) -> None:
    with pytest.raises(SettingsError, match=r"^overrides: train\.epochs: .*got 0"):
        settings.with_overrides({"train.epochs": 0})
    with pytest.raises(SettingsError, match=r"overrides: data\.labels: .*distinct"):
        settings.with_overrides({"data.labels": ["a", "a"]})


def test_write_overrides_keeps_comments_and_refuses_bad_values(tmp_path) -> None:
    from kaizen.tasks.workspace.settings import write_overrides

    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    settings = write_overrides(path, {"train.epochs": 3, "gate.max_regression": 0.05})
    assert settings.train.epochs == 3 and load_settings(path).gate.max_regression == 0.05
    assert "# epochs of each fine-tune of the champion" in path.read_text()
    before = path.read_text()
    with pytest.raises(SettingsError, match="max_regression"):
        write_overrides(path, {"gate.max_regression": -1})
    with pytest.raises(SettingsError, match="unknown setting"):
        write_overrides(path, {"train.nope": 1})
    assert path.read_text() == before


def test_storage_takes_urls_without_credentials(settings: Settings) -> None:
    shared = settings.with_overrides({
        "storage.tracking_uri": "postgresql://kaizen@db:5432/mlflow", "storage.artifacts": "s3://kaizen/mlartifacts",
        "storage.dvc_remote": "s3://kaizen/dvc", "storage.landing": "s3://kaizen/landing",
        "storage.ledger": "postgresql://kaizen@db:5432/ledger"})
    assert shared.storage.dvc_remote == "s3://kaizen/dvc" and shared.storage.ledger.endswith("/ledger")
    assert settings.with_overrides({"storage.tracking_uri": "http://mlflow:5000"}).storage.tracking_uri
    for key in ("tracking_uri", "artifacts", "dvc_remote", "landing", "ledger"):
        with pytest.raises(SettingsError, match=rf"storage\.{key}: .*password.*environment") as caught:
            settings.with_overrides({f"storage.{key}": "postgresql://kaizen:hunter2@db:5432/x"})
        assert "hunter2" not in str(caught.value) and "kaizen:***@db" in str(caught.value)


def test_a_webhook_key_in_params_is_refused_and_never_repeated(settings: Settings) -> None:
    for url, key in (("https://hooks.slack.com/services/T000/B000/XXXX", "XXXX"),
                     ("https://discord.com/api/webhooks/1234/TOKEN", "TOKEN"),
                     ("https://relay.example/hook?token=abc123", "abc123")):
        with pytest.raises(SettingsError, match=r"alerts\.webhook_url: .*env:NAME.*secret:BLOCK") as caught:
            settings.with_overrides({"alerts.webhook_url": url})
        assert key not in str(caught.value), caught.value
    for where in ("", "env:SLACK_HOOK", "secret:kaizen-slack", "http://127.0.0.1:8000/hooks/kaizen"):
        assert settings.with_overrides({"alerts.webhook_url": where}).alerts.webhook_url == where
