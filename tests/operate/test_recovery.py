"""SIGKILL at every step of an iteration, then run again: the work is finished, nothing twice, nothing lost.

Each kill happens in a child `kaizen run` (KAIZEN_KILL_AT=<point>); the next child run first finishes the
killed batch, then takes the next one. The first run (the bootstrap) and the last, which kill nothing, are what
`kaizen run` does (run_iterations) in the test's own process: two cold processes fewer, 15 to 20 s each. Asserted
at the end: the ledger, the MLflow runs and versions (orphans labelled, never promoted), training resumed from its
checkpoint, DVC consistent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kaizen.flows.cli.loop import run_iterations
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.faults import ENV
from tests.support.files import land, sample
from tests.support.processes import KAIZEN
from tests.support.workspaces import FAST, OPEN_GATE, clear_tracking_retries

POINTS = ["preprocess:reproduced", "train:checkpoint", "register:logged", "check:done", "promote:moved",
          "finish:before-ledger"]


def kaizen_run(ws, kill_at: str, prefect_api: str) -> subprocess.CompletedProcess:
    """`kaizen run` in a child process, killed at `kill_at`; on the session's Prefect server (a temporary one per
    child costs 10 to 17 s, and its watchdog is tested elsewhere)."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update({"PREFECT_HOME": str(ws.root / ".kaizen" / "prefect-child"), "PREFECT_API_URL": prefect_api, ENV: kill_at})
    log = ws.root / ".kaizen" / f"child-{kill_at}.log".replace(":", "_")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run([KAIZEN, "run", "-w", str(ws.root)], env=env, stdout=out, stderr=subprocess.STDOUT,
                              text=True, timeout=420)
    return subprocess.CompletedProcess(done.args, done.returncode, "", log.read_text())


def test_a_killed_iteration_is_finished_by_the_next_run(make_workspace, domains, prefect_server, monkeypatch) -> None:
    ws = make_workspace(**{k.replace(".", "__"): v for k, v in OPEN_GATE.items()})
    clear_tracking_retries(monkeypatch, ws)  # the runs in this process set them: kept from later tests
    monkeypatch.setenv("PREFECT_API_URL", prefect_server)  # as the children have it: no temporary server here
    land(ws, "b0.csv", sample(domains["movies"], 80, seed=30))
    assert [r["decision"] for r in run_iterations(ws, until_idle=True)] == ["promoted", "no new data"]

    for i, point in enumerate(POINTS, start=1):
        domain = ("amazon", "finefood", "movies")[i % 3]
        land(ws, f"b{i}.csv", sample(domains[domain], 80, seed=30 + i))
        killed = kaizen_run(ws, point, prefect_server)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-3000:])
        ledger = Ledger(ws.ledger_db)
        pending = [b.batch_id for b in ledger.batches(status="pending")]
        ledger.close()
        # The oldest pending batch is taken first: a kill may leave several waiting, never one lost.
        assert pending and pending[-1] == f"batch-{i + 1:04d}", (point, pending)
    run_iterations(ws, until_idle=True)  # raises should an iteration fail

    ledger = Ledger(ws.ledger_db)
    batches = ledger.batches()
    assert [(b.status, b.decision) for b in batches] == [("done", "promoted")] * (len(POINTS) + 1)
    assert [f.rows_in for f in ledger.files()] == [80] * (len(POINTS) + 1)  # as landed, counted by the test
    assert len(ledger.files()) == len(POINTS) + 1
    ledger.close()

    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    exp = tracking.experiment_id(client, ws)
    finished = {}
    for run in client.search_runs([exp], filter_string="tags.`kaizen.batch` != ''", max_results=100):
        batch, decision = run.data.tags[TAG["batch"]], run.data.tags.get(TAG["decision"])
        if decision == "orphaned":
            assert run.info.status == "KILLED", (batch, run.info.status)
        else:
            assert decision == "promoted" and run.info.status == "FINISHED", (batch, decision, run.info.status)
            assert batch not in finished, f"{batch} decided twice"
            finished[batch] = run
    assert sorted(finished) == [b.batch_id for b in batches]

    champion = tracking.model_by_alias(client, name, tracking.CHAMPION)
    orphans = [mv for mv in client.search_model_versions(f"name='{name}'")
               if mv.tags.get(TAG["decision"]) == "orphaned"]
    assert orphans and champion.version not in {str(mv.version) for mv in orphans}
    assert tracking.model_version(client, name, champion.version).tags[TAG["batch"]] == batches[-1].batch_id
    # Killed after the alias moved, or before the batch was closed: completed from the record, not trained
    # again (one run each, no orphan).
    completed = [b for b, run in finished.items() if "kaizen.recovered" in run.data.tags]
    assert len(completed) == 2
    for batch in completed:  # earlier attempts at the same batch may be orphans; none came after the completion
        runs = client.search_runs([exp], filter_string=f"tags.`kaizen.batch` = '{batch}'")
        later = [r for r in runs if r.info.start_time > finished[batch].info.start_time]
        assert later == [], (batch, [r.data.tags.get(TAG["decision"]) for r in later])
    # Killed at the first checkpoint: the next attempt (which may itself be killed later) trained only the
    # epochs after it.
    every_run = client.search_runs([exp], filter_string="tags.`kaizen.batch` != ''", max_results=100)
    steps = [[m.step for m in client.get_metric_history(run.info.run_id, "train.accuracy")] for run in every_run]
    assert list(range(2, FAST["train.epochs"] + 1)) in steps, steps

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=ws.root, env=env, capture_output=True,
                            text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_two_workspaces_on_one_tracking_store_never_touch_each_others_runs(make_workspace, monkeypatch,
                                                                            tmp_path) -> None:
    from types import SimpleNamespace

    import pytest

    from kaizen.tasks.operate.recovery import recover_interrupted
    from kaizen.tasks.registry.record import ForeignModel, start_iteration
    from kaizen.tasks.workspace.layout import Workspace

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'shared-mlflow.db'}")
    a, b = make_workspace("a"), make_workspace("b", model__registered_name="kaizen-b")
    data = SimpleNamespace(prepared_md5="md5", accepted_md5="md5", lock="stages: {}\n")
    for ws in (a, b):  # each has a pending batch-0001 of its own
        with Ledger(ws.ledger_db) as ledger:
            ledger.record_batch("batch-0001", 10, [])
    # A's attempt at batch-0001 was killed mid-training: its run is open, undecided.
    a_run = start_iteration(a, "batch-0001", ["batch-0001"], data)

    assert recover_interrupted(b, "batch-0001") is None  # B finds no attempt of its own...
    client = tracking.connect(a)
    run = client.get_run(a_run.run_id)
    assert run.info.status == "RUNNING" and TAG["decision"] not in run.data.tags  # ...and leaves A's alone
    b_run = start_iteration(b, "batch-0001", ["batch-0001"], data)
    assert b_run.loop_run_id != a_run.loop_run_id
    assert client.get_run(b_run.run_id).data.tags[TAG["workspace"]] == b.workspace_id

    recover_interrupted(a, "batch-0001")  # A's own recovery does label its killed attempt
    assert client.get_run(a_run.run_id).data.tags[TAG["decision"]] == "orphaned"
    assert client.get_run(b_run.run_id).info.status == "RUNNING"

    # B naming A's registered model is refused, clearly.
    b_as_a = Workspace(b.root, b.settings.with_overrides({"model.registered_name": a.settings.model.registered_name}))
    with pytest.raises(ForeignModel, match=rf"'kaizen-sentiment' .* belongs to workspace '{a.workspace_id}'"):
        start_iteration(b_as_a, "batch-0001", ["batch-0001"], data)


KILLED_AFTER_THE_MOVE = """
import pickle, sys
from kaizen.tasks.evaluation.promote import GateDecision, decide
from kaizen.tasks.workspace.layout import Workspace

it = pickle.loads(open(sys.argv[2], "rb").read())
decide(Workspace.open(sys.argv[1]), it, sys.argv[3], None, GateDecision(True, ["better"], "promoted: better"))
"""


def test_a_promotion_rolled_back_after_a_kill_is_finished_as_promoted_not_retrained(make_workspace,
                                                                                   tmp_path) -> None:
    """Killed after the champion alias moved, before the decision was recorded; an operator rolls the new champion
    back before the next run. The next run's recovery records the promotion, leaves the rollback standing, and
    trains nothing again."""
    import pickle
    from types import SimpleNamespace

    from kaizen.tasks.operate.operations import rollback
    from kaizen.tasks.operate.recovery import recover_interrupted
    from kaizen.tasks.registry.record import start_iteration

    ws = make_workspace()
    client, name = tracking.connect(ws), ws.settings.model.registered_name
    data = SimpleNamespace(prepared_md5="md5", accepted_md5="md5", lock="stages: {}\n")
    with Ledger(ws.ledger_db) as ledger:
        ledger.record_batch("batch-0001", 10, [])
    first = start_iteration(ws, "batch-0001", ["batch-0001"], data)  # registers the model, claimed for `ws`
    v1 = client.create_model_version(name, str(tmp_path / "v1"), run_id=first.run_id).version
    client.set_terminated(first.run_id, "FINISHED")
    tracking.move_champion(client, name, str(v1), started_from=None)
    with Ledger(ws.ledger_db) as ledger:
        ledger.finish_batch("batch-0001", run_id=first.run_id, model_version=str(v1), decision="promoted")
        ledger.record_batch("batch-0002", 10, [])
    it = start_iteration(ws, "batch-0002", ["batch-0001", "batch-0002"], data)
    v2 = str(client.create_model_version(name, str(tmp_path / "v2"), run_id=it.run_id).version)
    (tmp_path / "it.pickle").write_bytes(pickle.dumps(it))

    env = {**{k: v for k, v in os.environ.items() if k != ENV}, ENV: "promote:moved"}
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_MOVE, str(ws.root), str(tmp_path / "it.pickle"),
                             v2], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == v2  # committed, not recorded
    assert TAG["decision"] not in client.get_run(it.run_id).data.tags
    rollback(ws, "v2 mislabels refunds")

    summary = recover_interrupted(ws, "batch-0002")  # the next run's first step

    assert summary is not None and summary.decision == "promoted"  # finished, so nothing is trained again
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == str(v1)  # the rollback stands
    assert tracking.model_by_alias(client, name, tracking.PREVIOUS).version == v2
    run = client.get_run(it.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG["decision"]] == "promoted"
    assert run.data.tags[TAG["champion_version"]] == str(v1)
    assert run.data.tags[TAG["recovered"]].startswith(f"promoted: completed after a kill; v{v2} rolled back ")
    assert run.data.tags[TAG["recovered"]].endswith(": v2 mislabels refunds")
    tags = tracking.model_version(client, name, v2).tags
    assert tags[TAG["decision"]] == "promoted" and TAG["rolled_back"] in tags
    with Ledger(ws.ledger_db) as ledger:
        assert [(b.status, b.decision, b.model_version) for b in ledger.batches()][1] == ("done", "promoted", v2)
