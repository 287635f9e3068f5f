"""The one typed settings object: `params.yaml`, loaded and validated once at the start of a command.

Its sections are frozen pydantic models (tasks/workspace/sections.py) with no defaults of their own: `params.yaml`
is the single source of every value, and a missing, unknown or out-of-range key is named in the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kaizen.tasks.workspace.sections import (
    AlertsSettings,
    DataSettings,
    DemoSettings,
    DriftSettings,
    GateSettings,
    LimitsSettings,
    MlflowSettings,
    ModelSettings,
    OperationsSettings,
    PreprocessSettings,
    ReplaySettings,
    ScheduleSettings,
    ServersSettings,
    StorageSettings,
    TrainSettings,
    TrustSettings,
    _Section,
)
from kaizen.tasks.workspace.traffic_sections import (
    CaptureSettings,
    SelectSettings,
    ServingSettings,
    WatchSettings,
)

__all__ = [
    "AlertsSettings",
    "CaptureSettings",
    "DataSettings",
    "DemoSettings",
    "DriftSettings",
    "GateSettings",
    "LimitsSettings",
    "MlflowSettings",
    "ModelSettings",
    "OperationsSettings",
    "PreprocessSettings",
    "ReplaySettings",
    "ScheduleSettings",
    "SelectSettings",
    "ServersSettings",
    "ServingSettings",
    "StorageSettings",
    "TrainSettings",
    "TrustSettings",
    "WatchSettings",
    "Settings", "SettingsError", "load_settings", "write_overrides",
]


class Settings(_Section):
    data: DataSettings
    storage: StorageSettings
    preprocess: PreprocessSettings
    replay: ReplaySettings
    model: ModelSettings
    train: TrainSettings
    drift: DriftSettings
    gate: GateSettings
    trust: TrustSettings
    schedule: ScheduleSettings
    serving: ServingSettings
    alerts: AlertsSettings
    mlflow: MlflowSettings
    demo: DemoSettings
    servers: ServersSettings
    operations: OperationsSettings
    limits: LimitsSettings = LimitsSettings()
    capture: CaptureSettings = CaptureSettings()
    select: SelectSettings = SelectSettings()
    watch: WatchSettings = WatchSettings()

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        """A copy with dotted keys replaced (`{"train.epochs": 1}`), validated like the file."""
        raw = self.model_dump(mode="python")
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in raw or key not in raw[section]:
                raise SettingsError(f"unknown setting {dotted!r}")
            raw[section][key] = value
        return _validate(raw, source="overrides")


class SettingsError(ValueError):
    """params.yaml is missing, unreadable or holds a bad value; the message names it."""


def _validate(raw: Any, source: str) -> Settings:
    from kaizen.tasks.workspace.redact import redact  # an error never repeats a secret someone put in a URL

    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {redact(repr(err.get('input')))})"
            for err in exc.errors()
        )
        raise SettingsError(f"{source}: {problems}") from exc


def load_settings(path: Path) -> Settings:
    """Read and validate params.yaml; every problem is reported with the key that holds it."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: no such file (run `kaizen init` to create a workspace)") from exc
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not UTF-8 text
        raise SettingsError(f"{path}: cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from exc
    return _validate(raw, source=str(path))


def write_overrides(path: Path, overrides: dict[str, Any]) -> Settings:
    """Set dotted keys (`{"train.epochs": 1}`) in params.yaml, keeping its comments; the result is validated
    before it is written, so a bad value never reaches the file."""
    from io import StringIO

    from ruamel.yaml import YAML  # round-trips comments; it comes with DVC

    round_trip = YAML()
    data = round_trip.load(Path(path).read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in data or key not in data[section]:
            raise SettingsError(f"{path}: unknown setting {dotted!r}")
        data[section][key] = value
    settings = _validate(data, source=f"{path} with {overrides}")
    text = StringIO()
    round_trip.dump(data, text)
    Path(path).write_text(text.getvalue(), encoding="utf-8")
    return settings
