"""Served traffic for the tests of the watch (tests/serving/test_watch.py, tests/flows/test_watch.py): a workspace
whose champion learned a batch of real movie reviews, and texts it answered, written as the server records them."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd

from kaizen.tasks.formats.text import normalize_text
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace

BATCH = "batch-0001"


def trained_copy(champion_ws: Workspace, movies: pd.DataFrame, root: Path) -> Workspace:
    """A copy of champion_ws (its own tracking store; the artifacts stay where they were logged) whose champion
    learned `movies`: the first 400 rows its train split, the next 200 its test split, as the DVC stage writes them.
    Its predictions on the test split are kept, as the loop keeps them."""
    from kaizen.tasks.evaluation.predictions import predictions_on_each

    # Not champion_ws's captures: the serving and scoring tests record their traffic there.
    shutil.copytree(champion_ws.root, root, symlinks=True, ignore=shutil.ignore_patterns("captures"))
    ws = Workspace.open(root)
    for split, rows in (("train", movies[:400]), ("test", movies[400:600])):
        path = ws.split_file(BATCH, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.assign(text=rows["text"].map(normalize_text)).reset_index(drop=True).to_parquet(path)
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    tracking.tag_version(client, name, "1", {TAG["batches_seen"]: BATCH})
    champion = tracking.model_by_alias(client, name, tracking.CHAMPION)
    predictions_on_each(ws, tracking.local_model(ws, "1"), champion, [BATCH], "test")
    return ws


def copy_of(template: Workspace, root: Path) -> Workspace:
    shutil.copytree(template.root, root, symlinks=True)
    return Workspace.open(root)


def served(ws: Workspace, texts: list[str], at: datetime, version: str = "1", keep_text: bool = True) -> None:
    """`texts` answered by the champion at `at`, recorded by the capture writer as `kaizen serve-model` does."""
    from kaizen.tasks.model.predict import model_labels, predict
    from kaizen.tasks.serving.capture import CaptureWriter

    model_dir = tracking.local_model(ws, "1")
    labels, probabilities = predict(model_dir, [normalize_text(t) for t in texts],
                                    max_length=ws.settings.model.max_length, device="cpu")
    names = model_labels(model_dir)
    answers = [{"prediction": label, **{f"p_{n}": float(p) for n, p in zip(names, row, strict=True)}, "reason": None}
               for label, row in zip(labels, probabilities, strict=True)]
    recording = Workspace(ws.root, ws.settings.with_overrides({"capture.keep_text": keep_text}))
    writer = CaptureWriter(recording, "serve", version)
    writer.submit(lambda: (texts, answers), at=at.timestamp())
    stats = writer.close()
    assert (stats.written, stats.failures) == (len(texts), 0), stats


def drift_event(ws: Workspace, run_id: str, seconds: float = 30) -> dict:
    """The payload of the workspace's kaizen.traffic.drifted event about the watch run `run_id` (copies of one
    workspace share its identity, so the run tells them apart), once the Prefect server has stored it (a moment
    after it accepted it)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from kaizen.tasks.notify.events import TRAFFIC
    from tests.support.processes import wait_until

    def found() -> dict:  # empty until there
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(
                event=EventNameFilter(name=[TRAFFIC]),
                resource=EventResourceFilter(id=[f"kaizen.workspace.{ws.workspace_id}"])), limit=50)
        return next((e.payload for e in page.events if e.payload.get("mlflow_run_id") == run_id), {})

    return wait_until(f"the kaizen.traffic.drifted event of run {run_id}", found, seconds, every=0.5)
