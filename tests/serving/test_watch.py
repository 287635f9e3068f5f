"""tasks/serving/watch.py on real captures (the capture writer's Parquet), real Evidently and a real MLflow store:
traffic like the champion's training data (movie reviews) shows no drift, a shifted stream (Amazon and airline
texts) shows it and is announced on the session's Prefect server and in `kaizen status`; without texts only the
champion's answers are checked; too little traffic waits for more, and each verdict starts the next window. (The
kaizen-watch flow and its deployment: tests/flows/test_watch.py.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from kaizen.tasks.notify import alerts
from kaizen.tasks.registry import tracking
from kaizen.tasks.serving.watch import OUTPUT_COLUMNS, TEXT_COLUMNS, last_watch, watch_traffic
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.settings import WatchSettings
from tests.support.files import sample
from tests.support.traffic import copy_of, drift_event, served, trained_copy


@pytest.fixture(scope="module")
def movies(domains) -> pd.DataFrame:
    return sample(domains["movies"], 900, seed=21)  # 400 train, 200 test, then traffic the champion never saw


@pytest.fixture(scope="module")
def template(champion_ws, movies, tmp_path_factory) -> Workspace:
    return trained_copy(champion_ws, movies, tmp_path_factory.mktemp("watched") / "ws")


@pytest.fixture
def ws(template, tmp_path) -> Workspace:
    """A workspace of the test's own: its captures and watch runs are nobody else's."""
    return copy_of(template, tmp_path / "ws")


def shifted(domains) -> list[str]:
    return sample(domains["amazon"], 75, seed=5)["text"].tolist() + sample(domains["airline"], 75, seed=5)["text"].tolist()


def test_traffic_like_the_training_data_shows_no_drift(ws, movies) -> None:
    served(ws, movies[600:750]["text"].tolist(), datetime.now(UTC) - timedelta(hours=1))
    found = watch_traffic(ws)
    assert (found.verdict, found.rows, found.answered, found.champion_version) == ("no drift shown", 150, 150, "1")
    assert set(found.columns) == {*TEXT_COLUMNS, *OUTPUT_COLUMNS} and found.notes == ()
    assert found.share is not None and found.share < ws.settings.watch.threshold
    assert alerts.traffic_alert(ws, found) is None  # nothing to tell
    run = tracking.connect(ws).get_run(found.run_id)
    assert run.data.tags["kaizen.watch.verdict"] == "no drift shown" and run.data.tags["kaizen.champion_version"] == "1"
    assert run.data.metrics["watch.answered"] == 150 and run.data.metrics["watch.drifted"] == 0.0
    logged = {a.path for a in tracking.connect(ws).list_artifacts(found.run_id, "reports")}
    assert logged == {"reports/text-drift.html", "reports/output-drift.html"}
    assert all(path.stat().st_size > 0 for path in found.reports)


def test_a_shifted_stream_shows_drift_is_announced_and_in_status(ws, domains, prefect_server, monkeypatch) -> None:
    from kaizen.flows.cli import app

    served(ws, shifted(domains), datetime.now(UTC) - timedelta(hours=1))
    found = watch_traffic(ws)
    assert found.verdict == "drift shown" and found.share is not None and found.share >= 0.5
    assert set(TEXT_COLUMNS) <= set(found.drifted_columns)

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    assert alerts.announce_traffic(ws, found)
    payload = drift_event(ws, found.run_id)
    assert payload["champion_version"] == "1" and payload["drifted_columns"] == list(found.drifted_columns)
    assert payload["rows"] == found.answered and payload["since"] == found.since.isoformat()
    assert f"the traffic champion v1 answered drifted from its data: {found.answered} texts" in payload["message"]
    assert "|MLflow run>" in payload["message"]

    runner = CliRunner()
    state = json.loads(runner.invoke(app, ["status", "--json", "-w", str(ws.root)]).output)
    assert state["traffic"]["run_id"] == found.run_id and state["traffic"]["verdict"] == "drift shown"
    shown = " ".join(runner.invoke(app, ["status", "-w", str(ws.root)]).output.split())  # as wrapped on a terminal
    assert f"traffic: {found.answered} captured since {found.since:%Y-%m-%d %H:%M} UTC, drift shown (text, " in shown
    assert f"(run {found.run_id})" in shown


def test_without_texts_only_the_champions_own_answers_are_checked(ws, domains, movies) -> None:
    now = datetime.now(UTC)
    served(ws, movies[600:750]["text"].tolist(), now - timedelta(hours=2), version="0", keep_text=False)
    found = watch_traffic(ws)  # answered by a version that is no longer the champion: nothing to compare
    assert (found.drifted, found.answered, found.run_id, last_watch(ws)) == (None, 150, None, None)
    assert "text drift not checked: texts are not kept" in found.notes[0]
    assert "champion v1 answered 0 of the texts, fewer than watch.min_rows (the rest: v0)" in found.notes[0]

    served(ws, sample(domains["finefood"], 150, seed=5)["text"].tolist(), now - timedelta(hours=1), keep_text=False)
    found = watch_traffic(ws)
    assert found.drifted is not None and set(found.columns) == set(OUTPUT_COLUMNS) and found.answered == 300
    (note,) = found.notes
    assert note.startswith("text drift not checked: texts are not kept (capture.keep_text: false)")
    assert last_watch(ws)["notes"] == [note]


def test_too_little_traffic_waits_for_more_and_a_verdict_starts_the_next_window(ws, movies) -> None:
    now = datetime.now(UTC)
    from kaizen.flows.cli import app

    served(ws, movies[600:660]["text"].tolist(), now - timedelta(minutes=30))
    said = " ".join(CliRunner().invoke(app, ["watch-traffic", "-w", str(ws.root)]).output.split())
    assert "no verdict: 60 answered of 60 captured" in said and "fewer than watch.min_rows (100)" in said
    waiting = watch_traffic(ws)
    assert (waiting.drifted, waiting.answered, waiting.run_id) == (None, 60, None)
    assert waiting.notes[0].startswith("not enough traffic: 60 answered text(s) captured since")
    assert last_watch(ws) is None  # no verdict, no run: the rows count towards the next watch

    served(ws, movies[660:720]["text"].tolist(), now - timedelta(minutes=20))
    found = watch_traffic(ws)
    assert found.answered == 120 and found.drifted is not None
    assert (last_watch(ws)["run_id"], last_watch(ws)["until"]) == (found.run_id, found.until.isoformat())

    after = watch_traffic(ws)
    assert (after.since, after.answered, after.drifted) == (found.until, 0, None)


def test_the_watch_settings_leave_room_for_a_verdict() -> None:
    assert WatchSettings().cron == "17 * * * *"  # a workspace from before the section is watched hourly
    with pytest.raises(ValidationError, match=r"max_rows \(50\) must be at least min_rows \(100\)"):
        WatchSettings(max_rows=50)

