"""The sections of params.yaml about the traffic the champion answers: serving it, capturing what it saw, watching
that for drift and choosing what to label (tasks/workspace/settings.py assembles them with tasks/workspace/sections.py's).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from kaizen.tasks.workspace.sections import _Section


class ServingSettings(_Section):
    port: int = Field(ge=1, le=65535)
    batch_size: int = Field(ge=1)
    chunk_rows: int = Field(ge=1)
    # Where a deployed scoring run may read and write (tasks/runtime/callers.py); none: the workspace's folder.
    roots: tuple[Annotated[str, Field(min_length=1)], ...]


class CaptureSettings(_Section):
    """What `kaizen serve-model` and `kaizen score` record of the texts they answer (tasks/serving/capture.py). Every
    knob has a default: a workspace made before this section existed still loads, and captures."""

    # On by default: served traffic is what drift on live data and choosing texts to label need, and recording it
    # costs the request nothing (a background thread writes it).
    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retention_days: int = Field(default=30, ge=1)
    # Kept by default: choosing texts to label and text drift need them; false where texts are personal data.
    keep_text: bool = True
    flush_rows: int = Field(default=1000, ge=1)
    flush_seconds: float = Field(default=60.0, gt=0.0)


class SelectSettings(_Section):
    """How `kaizen select` chooses captured texts to label (tasks/serving/selection.py). Every knob has a default: a
    workspace made before this section existed still loads."""

    uncertainty: Literal["margin", "entropy"] = "margin"
    pool_factor: int = Field(default=8, ge=1, le=1000)  # the most uncertain pool_factor x budget go on to diversity
    # typical: the text nearest the centre of each of N uncertainty-weighted clusters; farthest: greedy k-center
    method: Literal["typical", "farthest"] = "typical"
    # The budget shared among the labels the champion predicted, as often as it predicted each (typical only)
    by_prediction: bool = True
    max_capture_rows: int = Field(default=100_000, ge=1)  # the latest captures read, at most
    reference_rows: int = Field(default=1000, ge=0)  # the champion's training rows embedded for coverage (0: none)
    max_seconds: float = Field(default=600.0, gt=0.0)


class WatchSettings(_Section):
    """The watch on captured traffic (tasks/serving/watch.py: `kaizen watch-traffic`, the kaizen-watch deployment).
    Every knob has a default: a workspace made before this section existed still loads, and is watched."""

    cron: str = Field(default="17 * * * *", min_length=9)
    # How far back a watch looks at most: it reads the captures since the last verdict, never older ones.
    window_hours: float = Field(default=24.0, gt=0.0)
    # Fewer answered texts than this give no verdict: a drift test on a handful of rows says nothing.
    min_rows: int = Field(default=100, ge=10)
    max_rows: int = Field(default=2000, ge=10)  # the latest this many captures of the window (bounds the cost)
    threshold: float = Field(default=0.5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _room_for_a_verdict(self) -> WatchSettings:
        if self.max_rows < self.min_rows:
            raise ValueError(f"max_rows ({self.max_rows}) must be at least min_rows ({self.min_rows})")
        return self
