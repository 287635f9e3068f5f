"""tasks.registry against a tracking server that goes away mid-iteration: MLflow's own HTTP retries are the one
retry layer. An outage shorter than their bounded wait is ridden out and the iteration completes (every epoch's
metrics logged); a longer one fails the attempt within a bounded time, without counting it against the batch,
and the next run finishes the iteration. Nothing is promoted twice, nothing lost. And the gate's reasons are fitted to
what MLflow stores whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from hypothesis import given
from hypothesis import strategies as st

from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace import environment
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.processes import KAIZEN, cli_env, free_port, stop, wait_until
from tests.support.services import start_mlflow
from tests.support.workspaces import OPEN_GATE, clear_tracking_retries, write_params


def mlflow_on(store: Path, port: int) -> subprocess.Popen:
    """The MLflow server of `store`, on `port` each time it is started (its clients keep the one URL)."""
    return start_mlflow(f"sqlite:///{store}/mlflow.db", str(store / "artifacts"), store / "server.log", port=port,
                        seconds=180)[0]


def attempt_started(url: str, batch: str) -> bool:
    """The iteration's MLflow run exists: the iteration is under way and talks to the server from now on."""
    try:
        found = httpx.post(f"{url}/api/2.0/mlflow/runs/search", timeout=5, json={
            "experiment_ids": ["1"], "filter": f"tags.`{TAG['batch']}` = '{batch}'"}).json()
    except httpx.TransportError:
        return False
    return bool(found.get("runs"))


def test_the_tracking_server_restarting_mid_iteration_loses_nothing_and_promotes_once(make_workspace, domains,
                                                                                   tmp_path, prefect_server) -> None:
    store = tmp_path / "store"
    store.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ws = make_workspace(**{k.replace(".", "__"): v for k, v in OPEN_GATE.items()})
    shipped = environment.tracking_retry_env(ws)  # in the environment as a kaizen process (or an earlier test) left it
    env = {**cli_env(), **shipped, environment.SET_BY_KAIZEN: json.dumps(shipped), "MLFLOW_TRACKING_URI": url,
           "PREFECT_HOME": str(ws.state_dir / "prefect-run"), "PREFECT_API_URL": prefect_server}

    def run_during_outage(batch: str, down_for: float | None) -> tuple[subprocess.CompletedProcess, float]:
        """`kaizen run` with the server stopped once the iteration is under way; back after `down_for` s
        (None: once the run has ended). Also how long the run went on once the server had gone."""
        nonlocal server
        log = ws.state_dir / f"run-{batch}.log"
        with open(log, "w") as out:
            run = subprocess.Popen([KAIZEN, "run", "-w", str(ws.root)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
            try:
                wait_until("the iteration's run", lambda: attempt_started(url, batch) or run.poll() is not None, 300,
                           every=0.3)
                stopped = time.monotonic()
                stop(server, grace=60)
                if down_for is not None:
                    time.sleep(down_for)
                    server = mlflow_on(store, port)
                run.wait(timeout=600)
            finally:
                stop(run, signal.SIGKILL)
        return subprocess.CompletedProcess(run.args, run.returncode, log.read_text(), ""), time.monotonic() - stopped

    server = mlflow_on(store, port)
    try:
        # 1. An outage shorter than MLflow's retries (operations.tracking_*): ridden out, the iteration completes.
        land(ws, "movies.csv", sample(domains["movies"], 80, seed=70))
        done, _ = run_during_outage("batch-0001", down_for=3)
        assert done.returncode == 0, done.stdout[-3000:]

        # 2. An outage longer than a short retry budget: the attempt fails within a bounded time, uncounted...
        write_params(ws.root, {"operations.tracking_retries": 2, "operations.tracking_timeout_seconds": 5})
        land(ws, "amazon.csv", sample(domains["amazon"], 80, seed=71))
        failed, took = run_during_outage("batch-0002", down_for=None)
        assert failed.returncode == 1 and "the iteration failed" in failed.stdout, failed.stdout[-3000:]
        # Bounded by these settings (3 tries of at most 5 s, a second apart), not the shipped ones: those wait 126 s
        # between the tries of one request (and they are in the run's environment: params.yaml must win), and
        # Prefect's retries would multiply that. The timed log lines say where the time went.
        timed = "\n".join(line[:200] for line in failed.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d", line))
        assert took < 100, f"{took:.0f} s after the server stopped:\n{timed}"
        with Ledger(ws.ledger_db) as ledger:
            assert [(b.batch_id, b.status) for b in ledger.batches()] == [("batch-0001", "done"),
                                                                         ("batch-0002", "pending")]
            assert ledger.failures_in_a_row("batch-0002")[0] == 0  # a server that was down is not the batch's fault
        # ...and once the server is back, the next run finishes it.
        server = mlflow_on(store, port)
        finished = subprocess.run([KAIZEN, "run", "-w", str(ws.root)], env=env, capture_output=True, text=True,
                                  timeout=600)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            client = tracking.connect(ws)
            name = ws.settings.model.registered_name
            decided = {}
            for run in client.search_runs([tracking.experiment_id(client, ws)], "tags.`kaizen.batch` != ''"):
                decision = run.data.tags.get(TAG["decision"])
                assert decision in ("promoted", "orphaned"), decision
                if decision == "promoted":
                    assert run.data.tags[TAG["batch"]] not in decided, "decided twice"
                    decided[run.data.tags[TAG["batch"]]] = run
            assert sorted(decided) == ["batch-0001", "batch-0002"]  # each promoted exactly once
            epochs = {"batch-0001": ws.settings.train.bootstrap_epochs, "batch-0002": ws.settings.train.epochs}
            for batch, run in decided.items():  # every epoch's metrics, through the outage
                steps = [m.step for m in client.get_metric_history(run.info.run_id, "train.accuracy")]
                assert steps == list(range(1, epochs[batch] + 1)), (batch, steps)
            champion = tracking.model_by_alias(client, name, tracking.CHAMPION)
            assert champion.run_id == decided["batch-0002"].info.run_id
            assert tracking.model_by_alias(client, name, tracking.PREVIOUS).run_id == decided["batch-0001"].info.run_id
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI")
    finally:
        stop(server, grace=60)


CHILD = ("import os, sys; from kaizen.tasks.workspace import environment; from kaizen.tasks.workspace.layout import "
         "Workspace; environment.apply_tracking_retries(Workspace.open(sys.argv[1])); print(os.environ['{}'])")


def test_a_child_process_applies_its_own_tracking_retries_and_the_users_own_win(make_workspace, monkeypatch):
    """A kaizen process (a served deployment, a test) starts others that inherit the MLflow retry settings it put
    in its environment: each applies its own params.yaml over them (edited since), but never over the user's."""
    ws = make_workspace()
    clear_tracking_retries(monkeypatch, ws)
    environment.apply_tracking_retries(ws)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == str(ws.settings.operations.tracking_retries)
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(ws.settings.operations.tracking_timeout_seconds)
    write_params(ws.root, {"operations.tracking_retries": 2, "operations.tracking_timeout_seconds": 5})

    def in_child(key: str, env: dict[str, str]) -> str:
        done = subprocess.run([sys.executable, "-c", CHILD.format(key), str(ws.root)], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert in_child("MLFLOW_HTTP_REQUEST_MAX_RETRIES", dict(os.environ)) == "2"
    assert in_child("MLFLOW_HTTP_REQUEST_TIMEOUT", dict(os.environ)) == "5"
    assert in_child("MLFLOW_HTTP_REQUEST_MAX_RETRIES", {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4"}) == "4"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "9")  # the user's, set in this process after kaizen's
    environment.apply_tracking_retries(Workspace.open(ws.root))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"  # kaizen's own, from the edited params.yaml
    assert in_child("MLFLOW_HTTP_REQUEST_TIMEOUT", dict(os.environ)) == "9"


LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
               max_size=300)  # no character that splits a line


@given(st.lists(LINE, max_size=80), st.integers(60, 3000))
def test_fit_lines_keeps_whole_first_lines_and_counts_the_rest(lines, limit):
    text = "\n".join(lines)
    fitted = tracking.fit_lines(text, limit, "reasons.txt")
    assert len(fitted) <= limit
    if len(text) <= limit:
        assert fitted == text
        return
    lines = text.splitlines()
    *shown, tail = fitted.split("\n")
    rest = int(re.fullmatch(r"\.\.\. (\d+) more lines in reasons\.txt", tail).group(1))
    whole = len(lines) - rest  # lines shown whole, the first ones
    if whole:
        assert shown == lines[:whole]
        if whole < len(lines):  # the next line would not have fitted
            longer = lines[: whole + 1] + [f"... {rest - 1} more lines in reasons.txt"]
            assert len("\n".join(longer)) > limit
    else:  # not even the first line fits: its start
        assert len(shown) == 1 and lines[0].startswith(shown[0])
        assert len(lines[0]) + 1 + len(tail) > limit


def test_fitted_reasons_are_stored_whole_by_mlflow(tmp_path):
    """The limits are MLflow's: a fitted run tag reads back unchanged (MLflow cuts longer ones), a fitted model
    version tag is accepted (MLflow refuses longer ones)."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=store, registry_uri=store)  # not the registry an earlier test set globally
    run = client.create_run(client.create_experiment("fit"))
    reasons = "\n".join(f"batch-{i:04d}: accuracy -0.004 [-0.031, +0.023], not inferior (p 0.001)" for i in range(2000))
    for limit in (tracking.RUN_TAG_CHARS, tracking.VERSION_TAG_CHARS):
        assert len(reasons) > limit
    short = tracking.fit_lines(reasons, tracking.RUN_TAG_CHARS, "gate/reasons.txt")
    tracking.set_tags(client, run.info.run_id, {"reasons": short})
    assert client.get_run(run.info.run_id).data.tags["reasons"] == short
    client.create_registered_model("fit")
    version = client.create_model_version("fit", f"runs:/{run.info.run_id}/model", run.info.run_id)
    longer = tracking.fit_lines(reasons, tracking.VERSION_TAG_CHARS, "gate/reasons.txt")
    client.set_model_version_tag("fit", version.version, "reasons", longer)
    assert client.get_model_version("fit", version.version).tags["reasons"] == longer


def test_a_param_longer_than_mlflow_takes_keeps_its_start_and_says_where_it_is_whole(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("params"))
    label_map = str({f"label-{i}": "positive" for i in range(400)})  # a long data.label_map
    assert len(label_map) > tracking.PARAM_CHARS
    tracking.log_params(client, run.info.run_id, {"data.label_map": label_map, "train.epochs": 1}, "settings.json")
    params = client.get_run(run.info.run_id).data.params
    assert params["train.epochs"] == "1" and len(params["data.label_map"]) == tracking.PARAM_CHARS
    start, tail = params["data.label_map"].split(" ... ")
    assert label_map.startswith(start) and tail == f"{len(label_map)} characters in all, whole in settings.json"
