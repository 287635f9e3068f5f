"""tasks.failures: a batch that fails the same way again and again is set aside, reported, and retried on demand;
the batches behind it are learned. Real flows on a real Prefect server, real DVC, MLflow and training."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.flows.loop import IterationTimeout, iteration
from kaizen.tasks.ingest.collect import collect, next_batch
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.notify.events import FAILED
from kaizen.tasks.operate.failures import note_failure
from kaizen.tasks.registry import tracking
from tests.support.files import land, sample
from tests.support.processes import free_port, wait_until
from tests.support.workspaces import clear_tracking_retries, write_params


def failed_events(ws) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(filter=EventFilter(
            event=EventNameFilter(name=[FAILED]),
            resource=EventResourceFilter(id=[f"kaizen.workspace.{ws.workspace_id}"])), limit=50)
    return sorted((e.payload for e in page.events), key=lambda p: p["in_a_row"])


def test_a_batch_failing_the_same_way_is_set_aside_and_the_next_is_learned(make_workspace, domains,
                                                                          prefect_server) -> None:
    ws = make_workspace(operations__max_failed_attempts=2, data__labels=["negative", "positive", "neutral"])
    with_neutral = sample(domains["movies"], 40, seed=40)
    with_neutral.loc[:9, "label"] = "neutral"
    land(ws, "with-neutral.csv", with_neutral)
    assert collect(ws).new_batches == ["batch-0001"]
    write_params(ws.root, {"data.labels": ["negative", "positive"]})  # a label removed from params.yaml
    land(ws, "movies.csv", sample(domains["movies"], 40, seed=41))

    for attempt in (1, 2):
        with pytest.raises(ValueError, match="labels not in data.labels: neutral"):
            iteration(str(ws.root))
        with Ledger(ws.ledger_db) as ledger:
            status = {b.batch_id: b.status for b in ledger.batches()}
        assert status == {"batch-0001": "pending" if attempt == 1 else "failed", "batch-0002": "pending"}
    assert not ws.batch_file("batch-0001").exists()  # out of the DVC stage's input while it is set aside

    learned = iteration(str(ws.root))  # the loop goes on with the batch behind it

    assert learned["batch"] == "batch-0002" and learned["decision"] in ("promoted", "rejected")
    runner = CliRunner()
    state = json.loads(runner.invoke(app, ["status", "--json", "-w", str(ws.root)]).output)
    (failed,) = state["failed"]
    assert (failed["batch"], failed["attempts"], failed["error"]) == ("batch-0001", 2, "ValueError: labels not in data.labels: neutral")
    assert [(b["batch"], b["status"]) for b in state["batches"]] == [("batch-0001", "failed"), ("batch-0002", "done")]
    text = runner.invoke(app, ["status", "-w", str(ws.root)]).output
    assert "batch-0001 failed 2 times in a row: ValueError: labels not in data.labels: neutral" in text and "kaizen batch retry" in text
    rows = [json.loads(line) for line in runner.invoke(app, ["history", "--json", "-w", str(ws.root)]).output.splitlines()]
    assert [(r["batch"], r["decision"]) for r in rows] == [("batch-0002", learned["decision"]), ("batch-0001", "failed")]
    assert "ValueError: labels not in data.labels: neutral" in rows[1]["reasons"][0]
    events = []
    for _ in range(30):  # the server stores events a moment after it accepts them
        events = failed_events(ws)
        if len(events) == 2:
            break
        time.sleep(1)
    assert [(e["batch"], e["in_a_row"], e["batch_status"]) for e in events] == [
        ("batch-0001", 1, "pending"), ("batch-0001", 2, "failed")]

    result = runner.invoke(app, ["batch", "retry", "batch-0001", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert ws.batch_file("batch-0001").exists() and next_batch(ws)[0] == "batch-0001"
    again = runner.invoke(app, ["batch", "retry", "batch-0001", "-w", str(ws.root)])
    assert again.exit_code == 2 and "batch-0001 is pending, not failed" in again.output


def test_an_iteration_past_its_timeout_is_stopped_and_counted(make_workspace, domains, prefect_server) -> None:
    ws = make_workspace(operations__iteration_timeout_seconds=1, operations__max_failed_attempts=1)
    tracking.connect(ws)  # the tracking store exists already, as in any workspace past its first iteration
    land(ws, "movies.csv", sample(domains["movies"], 40, seed=42))

    started = time.monotonic()
    with pytest.raises(IterationTimeout, match=r"operations.iteration_timeout_seconds \(1 s\)"):
        iteration(str(ws.root))

    assert time.monotonic() - started < 60
    with Ledger(ws.ledger_db) as ledger:
        assert [(b.batch_id, b.status) for b in ledger.batches()] == [("batch-0001", "failed")]
        assert ledger.failures_in_a_row("batch-0001")[1].startswith("IterationTimeout: the iteration on batch-0001")
    assert iteration(str(ws.root))["batch"] is None  # the workspace is free again; nothing else waits


def test_a_ledger_from_before_failed_attempts_were_counted_gains_their_table(tmp_path) -> None:
    import sqlite3

    from kaizen.tasks.ingest.ledger import SCHEMA

    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as old:  # the ledger as earlier versions wrote it
        old.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS batch_attempts")[0])
        old.execute("INSERT INTO batches (batch_id, created_at, rows, files) VALUES ('batch-0001', 'then', 5, '[]')")
    with Ledger(path) as ledger:
        ledger.record_attempt("batch-0001", "failed", "KeyError: 'x'")
        assert ledger.failures_in_a_row("batch-0001")[:2] == (1, "KeyError: 'x'")
        assert [b.status for b in ledger.batches()] == ["pending"]


def test_a_counted_failure_is_recorded_and_announced_even_when_its_run_cannot_be_closed(
        make_workspace, domains, prefect_server, monkeypatch, caplog) -> None:
    """The tracking server gone by the time a failure is noted (nothing listens at its address): the attempt is
    still counted, logged and sent as an event, with its own error, not the one from closing its run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = make_workspace(storage__tracking_uri=f"http://127.0.0.1:{free_port()}", operations__tracking_retries=0,
                        operations__tracking_timeout_seconds=2)
    clear_tracking_retries(monkeypatch, ws)
    land(ws, "movies.csv", sample(domains["movies"], 120, seed=3))
    collect(ws)
    batch_id, _ = next_batch(ws)
    from prefect import flow

    # In a flow, as the loop calls it: its event goes to the flow's Prefect server.
    attempt = flow(note_failure, name="note-failure", validate_parameters=False)(ws, batch_id, KeyError("neutral"))
    assert (attempt.counted, attempt.in_a_row, attempt.error) == (True, 1, "KeyError: 'neutral'")
    with Ledger(ws.ledger_db) as ledger:
        assert ledger.failures_in_a_row(batch_id)[:2] == (1, "KeyError: 'neutral'")
    assert "the failed attempt's MLflow run could not be closed" in caplog.text
    wait_until("the failure's event", lambda: failed_events(ws), 30)  # stored a moment after it is accepted
    assert [e["error"] for e in failed_events(ws)] == ["KeyError: 'neutral'"]
