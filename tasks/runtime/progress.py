"""progress: how far a long step has come (fine-tuning epochs, scoring chunks), shown in the Prefect UI as a
progress artifact of the running flow or task run. Outside a Prefect run it does nothing.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uuid import UUID


class RunProgress:
    """A progress artifact created at 0 % on the current run, moved by `update`."""

    def __init__(self, key: str, description: str) -> None:
        self.artifact_id: UUID | None = None
        if "prefect" not in sys.modules:  # nothing imported prefect, so this is no Prefect run: stay light
            return
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        from prefect.artifacts import create_progress_artifact

        # Prefect types its sync/async dispatch as returning the UUID or a coroutine; called from sync code, the UUID.
        self.artifact_id = create_progress_artifact(0.0, key=key, description=description)  # type: ignore[assignment]

    def update(self, fraction: float, description: str | None = None) -> None:
        """Set the progress to `fraction` (0 to 1) of the step, with what it is doing now."""
        if self.artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, round(100.0 * min(max(fraction, 0.0), 1.0), 1), description)
