"""The sections of params.yaml, one frozen pydantic model each (tasks/workspace/settings.py assembles them).

A section has no defaults of its own, except a knob added after workspaces existed (so that they still load):
params.yaml is the single source of every value, and a missing, unknown or out-of-range key is named in the error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)


class _FrozenDict(dict):
    """A mapping setting that cannot change and hashes by value, like every other part of a frozen section."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("settings are frozen")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]


def _frozen_map(value: Any) -> Any:
    """YAML keys may come as numbers (`0: negative`): a label in a file is matched as text."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


FrozenMap = Annotated[dict[str, str], BeforeValidator(_frozen_map), AfterValidator(_FrozenDict)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSettings(_Section):
    text_column: str = Field(min_length=1)
    label_column: str = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=2)
    label_map: FrozenMap
    max_text_chars: int = Field(gt=0)
    min_batch_rows: int = Field(ge=1)
    settle_seconds: float = Field(ge=0.0, le=3600.0)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {list(labels)}")
        return labels

    @model_validator(mode="after")
    def _distinct_columns(self) -> DataSettings:
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must differ")
        unknown = sorted({v for v in self.label_map.values() if v not in self.labels})
        if unknown:
            raise ValueError(f"label_map maps to {unknown}, which are not among labels {list(self.labels)}")
        return self


def _no_password(url: str) -> str:
    """Credentials come from the environment only (PGPASSWORD, AWS_SECRET_ACCESS_KEY...), never from a file."""
    from urllib.parse import urlsplit

    if "://" in url and urlsplit(url).password is not None:
        raise ValueError("holds a password: leave it out and set it in the environment (PGPASSWORD, AWS_...)")
    return url


class StorageSettings(_Section):
    tracking_uri: str
    artifacts: str
    dvc_remote: str
    landing: str = Field(min_length=1)
    ledger: str

    @field_validator("tracking_uri", "artifacts", "dvc_remote", "landing", "ledger")
    @classmethod
    def _credentials_elsewhere(cls, url: str) -> str:
        return _no_password(url)

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, uri: str) -> str:
        if uri and not uri.startswith(("http://", "https://", "sqlite:///", "postgresql", "mysql")):
            raise ValueError("expected a tracking server (http://...), a database URL (postgresql://..., "
                             "sqlite:///...) or empty for the workspace's own SQLite file")
        return uri

    @field_validator("ledger")
    @classmethod
    def _ledger(cls, url: str) -> str:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a PostgreSQL URL (postgresql://user@host/db) or empty for SQLite")
        return url

    @field_validator("artifacts", "dvc_remote")
    @classmethod
    def _absolute(cls, url: str) -> str:
        if url and "://" not in url and not url.startswith("/"):
            raise ValueError("expected a URL (s3://bucket/prefix) or an absolute path, or empty for .kaizen/")
        return url


class PreprocessSettings(_Section):
    seed: int
    val_fraction: float = Field(ge=0.0, lt=0.5)
    test_fraction: float = Field(gt=0.0, lt=0.5)
    max_test_rows: int = Field(ge=1)
    lowercase: bool


class ReplaySettings(_Section):
    ratio: float = Field(ge=0.0)
    max_rows: int = Field(ge=0)


class ModelSettings(_Section):
    registered_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backbone: str = Field(min_length=1)
    max_length: int = Field(ge=8, le=512)


class TrainSettings(_Section):
    epochs: int = Field(ge=1)
    bootstrap_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0.0, lt=1.0)
    weight_decay: float = Field(ge=0.0)
    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    max_train_rows: int = Field(ge=0)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    processes: int = Field(ge=1, le=64)
    deployment: str = Field(pattern=r"^$|^[^/]+/[^/]+$")
    # A default, unlike the other knobs: a workspace made before this knob existed still loads.
    balance_classes: Literal["never", "bootstrap", "always"] = "bootstrap"
    distill_weight: float = Field(ge=0.0, lt=1.0)
    distill_temperature: float = Field(gt=0.0)
    skip_if_champion_above: float = Field(ge=0.0)
    merge_alphas: tuple[float, ...]
    merge_val_rows: int = Field(ge=10)

    @field_validator("merge_alphas")
    @classmethod
    def _mixes(cls, alphas: tuple[float, ...]) -> tuple[float, ...]:
        if not alphas or any(not 0.0 < a <= 1.0 for a in alphas):
            raise ValueError(f"merge_alphas must be one or more numbers in (0, 1] (1: no merging), got {list(alphas)}")
        return alphas


class DriftSettings(_Section):
    text_method: str = Field(min_length=1)
    threshold: float = Field(gt=0.0, le=1.0)
    max_reference_rows: int = Field(ge=10)


class GateSettings(_Section):
    metric: Literal["accuracy", "f1"]
    # A default, so that a workspace made before this knob existed still loads, and keeps the gate it had.
    require_improvement: bool = True
    min_improvement: float = Field(ge=-1.0, le=1.0)
    improvement_alpha: float = Field(gt=0.0, le=1.0)
    max_regression: float = Field(ge=0.0, le=1.0)
    min_score: float = Field(ge=0.0, le=1.0)
    alpha: float = Field(gt=0.0, lt=0.5)
    resamples: int = Field(ge=100)
    min_test_rows: int = Field(ge=1)
    # A default, so that a workspace made before this knob existed still loads.
    max_earlier_rows: int = Field(default=4000, ge=0)
    # A default, so that a workspace made before this knob existed still loads.
    max_earlier_batches: int = Field(default=50, ge=0)
    # A default, so that a workspace made before this knob existed still loads, and gets the stricter gate.
    judge_against_best: bool = True
    # A default, so that a workspace made before this knob existed still loads.
    max_best_models: int = Field(default=10, ge=0)
    require_approval: bool
    approval_timeout_seconds: int = Field(ge=1)


class TrustSettings(_Section):
    min_kappa: float = Field(ge=-1.0, le=1.0)
    confident: float = Field(gt=0.5, lt=1.0)
    max_confident_issues: float = Field(gt=0.0, le=1.0)


class ScheduleSettings(_Section):
    cron: str = Field(min_length=9)
    poll_seconds: int = Field(ge=1, le=3600)


class AlertsSettings(_Section):
    # "", env:NAME (a variable), secret:BLOCK (a Prefect Secret block), or a URL that holds no secret (a local relay)
    webhook_url: str = Field(pattern=r"^$|^https?://\S+$|^env:[A-Za-z_][A-Za-z0-9_]*$|^secret:[a-z0-9][a-z0-9-]*$")

    @field_validator("webhook_url")
    @classmethod
    def _key_elsewhere(cls, url: str) -> str:
        """A webhook's key is in its URL (Slack's /services/T../B../KEY): written here it would be committed, logged
        and shown."""
        from kaizen.tasks.workspace.redact import holds_secret

        if holds_secret(url):
            raise ValueError("holds the webhook's key: give it as env:NAME (an environment variable holding the URL) "
                             "or secret:BLOCK (a Prefect Secret block holding it)")
        return url


class ServersSettings(_Section):
    host: str = Field(min_length=1)
    prefect_port: int = Field(ge=1, le=65535)
    mlflow_port: int = Field(ge=1, le=65535)
    startup_timeout_seconds: int = Field(ge=5)
    slot_wait_seconds: int = Field(ge=1)

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServersSettings:
        if self.prefect_port == self.mlflow_port:
            raise ValueError(f"prefect_port and mlflow_port must differ (both {self.prefect_port})")
        return self


class DemoSettings(_Section):
    rows_per_batch: int = Field(ge=0)
    rows_per_batch_gpu: int = Field(ge=0)
    seed: int
    # A default, so that a workspace made before this knob existed still loads (and quarantines neutral tweets).
    grow_labels: bool = False


class MlflowSettings(_Section):
    experiment: str = Field(min_length=1)


class OperationsSettings(_Section):
    max_failed_attempts: int = Field(ge=1)
    iteration_timeout_seconds: int = Field(ge=1)
    tracking_retries: int = Field(ge=0, le=10)  # MLflow refuses more than 10
    tracking_backoff_seconds: int = Field(ge=0, le=120)
    tracking_timeout_seconds: int = Field(ge=1)
    heartbeat_seconds: int = Field(ge=30)  # Prefect's minimum
    zombie_after_seconds: int = Field(ge=60)

    @model_validator(mode="after")
    def _heard_before_declared_dead(self) -> OperationsSettings:
        if self.zombie_after_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"zombie_after_seconds ({self.zombie_after_seconds}) must be at least twice "
                             f"heartbeat_seconds ({self.heartbeat_seconds}): one late heartbeat is not a crash")
        return self


class LimitsSettings(_Section):
    """What reading one file may cost (tasks/formats/): each limit is checked while the file is read, never after,
    and a file past one is refused (collect) or stops there (score), the error naming the limit. Every knob has a
    default: a workspace made before this section existed still loads."""

    max_file_bytes: int = Field(default=2 << 30, ge=1)
    max_compression_ratio: float = Field(default=100.0, ge=1.0)
    ratio_checked_after_bytes: int = Field(default=64 << 20, ge=0)
    # Above a long review, yet a row of megabytes is still a row that data.max_text_chars quarantines alone.
    max_text_bytes: int = Field(default=4 << 20, ge=1)
    max_row_group_bytes: int = Field(default=256 << 20, ge=1)
    max_file_rows: int = Field(default=50_000_000, ge=1)
    max_read_seconds: float = Field(default=3600.0, gt=0.0)
    # What collect keeps of a rejected row (tasks/ingest/ingest_file.py): quarantine proportional to the file.
    quarantine_text_chars: int = Field(default=1000, ge=1)
    max_quarantine_bytes: int = Field(default=64 << 20, ge=1)
