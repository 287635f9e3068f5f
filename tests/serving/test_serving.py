"""Serving the registry's champion: the logged model carries its truncation, max_length, normalisation, pinned
requirements, signature and input example; `kaizen serve-model` (MLflow's scoring app under uvicorn, on a loopback
port) answers ordinary texts, a 3,000-word text and an empty one exactly as `kaizen predict` does, and records what
it answered in the workspace's captures."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.tasks.registry import tracking
from kaizen.tasks.serving import champion
from kaizen.tasks.serving.capture import read_captures
from tests.support.files import sample
from tests.support.processes import KAIZEN, cli_env, free_port, start, stop, wait_until
from tests.support.services import answers
from tests.support.workspaces import write_params

FULLWIDTH = "ｔｅｒｒｉｂｌｅ，  ｂｏｒｉｎｇ ｆｉｌｍ"  # NFKC (the DVC stage's normalisation) makes it the next line
PLAIN = "terrible, boring film"


@pytest.fixture(scope="module")
def texts(domains) -> list[str]:
    snippets = sample(domains["movies"], 40, seed=33)["text"].tolist()
    long = " ".join(snippets * 20)
    while len(long.split()) < 3000:
        long += " " + long
    return [*snippets[:12], long, "", FULLWIDTH, PLAIN]


@pytest.fixture(scope="module")
def server(champion_ws) -> Iterator[str]:
    port = free_port()
    log = champion_ws.state_dir / "serve-model.log"
    write_params(champion_ws.root, {"capture.flush_seconds": 0.2})  # its answers in the captures at once
    proc = start([KAIZEN, "serve-model", "--port", str(port), "-w", str(champion_ws.root)], log, cli_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("the model server", lambda: answers(f"{url}/ping"), 240, every=1.0, proc=proc, log=log)
        yield url
    finally:
        stop(proc)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_logged_model_carries_what_it_was_trained_with(champion_ws) -> None:
    folder = champion.version_dir(champion_ws, "1")
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["config"]["max_length"] == champion_ws.settings.model.max_length == 32
    assert pyfunc["config"]["lowercase"] is champion_ws.settings.preprocess.lowercase
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models-from-code: nothing unpickled
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "string", "name": "text", "required": True}]
    assert [c["name"] for c in json.loads(mlmodel["signature"]["outputs"])] == [
        "prediction", "p_negative", "p_positive", "reason"]
    assert json.loads((folder / "serving_input_example.json").read_text())["dataframe_split"]["columns"] == ["text"]
    requirements = (folder / "requirements.txt").read_text().split()
    assert all("==" in line for line in requirements), requirements
    assert {"torch==2.13.0", f"transformers=={version('transformers')}", f"mlflow=={version('mlflow')}"} <= \
        set(requirements)
    shipped = {p.relative_to(folder / "code").as_posix() for p in (folder / "code").rglob("*.py")}
    assert {"kaizen/tasks/model/predict.py", "kaizen/tasks/formats/text.py"} <= shipped  # self-contained
    files = {p.name for p in folder.rglob("*") if p.is_file()}
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pkl", ".pt"))]


def test_served_answers_are_kaizen_predict_answers(server, champion_ws, texts, tmp_path: Path) -> None:
    status, body = post(server, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    csv = tmp_path / "texts.csv"
    pd.DataFrame({"text": texts}).to_csv(csv, index=False)
    result = CliRunner().invoke(app, ["predict", str(csv), "-w", str(champion_ws.root)])
    assert result.exit_code == 0, result.output
    local = pd.read_csv(tmp_path / "texts.predictions.csv", keep_default_na=False, na_values=[""])
    assert list(served["prediction"].fillna("")) == list(local["prediction"].fillna(""))
    for column in ("p_negative", "p_positive"):  # equal up to float rounding: padding differs between batches
        served_p = served[column].astype(float)
        assert list(served_p.isna()) == list(local[column].isna())
        assert (served_p - local[column]).abs().max() < 1e-4
    assert set(served["prediction"][:12]) == {"negative", "positive"}  # a model that answers, not a constant

    long = texts.index(max(texts, key=len))
    assert len(texts[long].split()) >= 3000 and served["reason"][long] is None  # labelled: truncated at 32 tokens
    empty = texts.index("")
    assert served["reason"][empty] == "empty text" and served["prediction"][empty] is None
    # The same tokens after NFKC: the same answer, its probabilities to float rounding (two rows of one batch can
    # differ in the last bits: a run of the suite saw 0.002402575 against 0.002402649).
    wide, plain = served.iloc[texts.index(FULLWIDTH)], served.iloc[texts.index(PLAIN)]
    assert (wide["prediction"], wide["reason"]) == (plain["prediction"], plain["reason"])
    for column in ("p_negative", "p_positive"):
        assert abs(float(wide[column]) - float(plain[column])) < 1e-5, (column, wide[column], plain[column])
    assert set(local["model_version"]) == {1}

    single = CliRunner().invoke(app, ["predict", texts[0], "-w", str(champion_ws.root)])
    assert single.exit_code == 0 and f"{served['prediction'][0]}  (negative " in single.output, single.output
    empty_cli = CliRunner().invoke(app, ["predict", "", "-w", str(champion_ws.root)])
    assert empty_cli.exit_code == 1 and "empty text" in empty_cli.output


def test_without_truncation_or_normalisation_the_answers_would_differ(champion_ws, texts) -> None:
    """What the two checks above guard: the tiny model has 128 positions, and its tokenizer does not apply NFKC."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tracking.local_model(champion_ws, "1"))
    assert len(tokenizer(max(texts, key=len))["input_ids"]) > 128
    assert tokenizer(FULLWIDTH)["input_ids"] != tokenizer(PLAIN)["input_ids"]


def test_bad_requests_get_a_reason_or_a_clear_error(server) -> None:
    status, body = post(server, {"dataframe_records": [{"text": None}, {"text": 7}, {"text": "fine"}]})
    assert status == 200
    assert [p["reason"] for p in body["predictions"]] == [
        "no text (missing value)", "the text is a int, not a string", None]
    status, body = post(server, {"dataframe_records": [{"txt": "no such column"}]})
    assert status == 400 and "text" in body["message"]


def test_served_answers_are_recorded_in_the_captures(server, champion_ws) -> None:
    """Each text answered, with the version, the answer and its time, written by the server's own thread; a request
    refused is not an answer."""
    texts = [f"{uuid.uuid4().hex} a fine film", f"{uuid.uuid4().hex} a dreadful one"]
    mine = [*texts, None]
    began = datetime.now(UTC)
    assert post(server, {"dataframe_records": [{"txt": "refused"}]})[0] == 400
    status, body = post(server, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in mine]}})
    assert status == 200, body
    wait_until("the answers in the captures", lambda: len(read_captures(champion_ws, since=began)) == 3, 30, every=0.2)
    read = read_captures(champion_ws, since=began)
    assert list(read["text"]) == mine and set(read["source"]) == {"serve"} and set(read["model_version"]) == {"1"}
    assert list(read["text_sha256"])[:2] == [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    assert read["text_sha256"].iloc[2] is None and read["reason"].iloc[2] == "no text (missing value)"
    for row, answer in zip(read.itertuples(), body["predictions"], strict=True):
        assert (row.prediction, row.reason, list(row.labels)) == (answer["prediction"], answer["reason"],
                                                                  ["negative", "positive"])
        given = [answer["p_negative"], answer["p_positive"]]
        assert (None if row.probabilities is None else list(row.probabilities)) == (None if given[0] is None else given)
        assert began <= row.time.to_pydatetime() <= datetime.now(UTC)


def test_mlflow_builds_a_serving_image_context_from_the_registry(champion_ws, tmp_path: Path) -> None:
    """`mlflow models build-docker` without a Docker daemon: the same build context, from the registry URI."""
    from kaizen.tasks.workspace.environment import child_environment

    uri = f"models:/{champion_ws.settings.model.registered_name}@champion"
    env = child_environment(champion_ws, tracking=True)
    subprocess.run([sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", uri, "-d",
                    str(tmp_path / "image")], env=env, check=True, capture_output=True, timeout=300)
    dockerfile = (tmp_path / "image" / "Dockerfile").read_text()
    assert f"mlflow=={version('mlflow')}" in dockerfile and "_install_pyfunc_deps" in dockerfile
    assert "torch==2.13.0" in (tmp_path / "image" / "model_dir" / "requirements.txt").read_text()
    assert (tmp_path / "image" / "model_dir" / "code" / "kaizen" / "tasks" / "model" / "predict.py").exists()


def test_kaizen_loads_the_champion_as_mlflow_does(champion_ws) -> None:
    from mlflow.pyfunc import PyFuncModel

    classifier = champion.load_champion(champion_ws)
    assert isinstance(classifier.model, PyFuncModel) and classifier.version == "1"


def test_a_version_logged_before_serving_still_predicts(make_workspace, champion_ws, texts) -> None:
    """A champion logged with the transformers flavour (kaizen before serving) is read from its weights by the
    same code path, with the workspace's max_length and normalisation."""
    import mlflow
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ws = make_workspace("legacy")
    weights = tracking.local_model(champion_ws, "1")
    client = tracking.connect(ws)
    run = client.create_run(tracking.experiment_id(client, ws))
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.transformers.log_model(
            {"model": AutoModelForSequenceClassification.from_pretrained(weights),
             "tokenizer": AutoTokenizer.from_pretrained(weights)},
            name="model", task="text-classification", pip_requirements=["torch", "transformers"])
    name = ws.settings.model.registered_name
    client.create_registered_model(name)
    version = client.create_model_version(name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id).version
    tracking.move_champion(client, name, str(version), started_from=None)
    legacy = champion.load_champion(ws).predict(texts)
    current = champion.load_champion(champion_ws).predict(texts)
    assert list(legacy["prediction"]) == list(current["prediction"])
    assert list(legacy["reason"]) == list(current["reason"])


def test_serve_model_with_no_champion_says_so(make_workspace) -> None:
    ws = make_workspace("empty")
    result = CliRunner().invoke(app, ["serve-model", "-w", str(ws.root)])
    assert result.exit_code == 2 and "no champion yet" in result.output


# A racer: it downloads the version as kaizen does, and holds before its rename until every racer has downloaded,
# so the downloads overlap and the renames meet on every run, not by luck.
RACE = """
import os, sys, time
from pathlib import Path
import mlflow.artifacts
from kaizen.tasks.serving import champion
from kaizen.tasks.workspace.layout import Workspace
ws, gate, racers = Workspace.open(Path(sys.argv[1])), Path(sys.argv[2]), int(sys.argv[3])
download = mlflow.artifacts.download_artifacts

def held(**kwargs):
    local = download(**kwargs)
    (gate / str(os.getpid())).touch()
    deadline = time.monotonic() + 60  # a racer that failed never arrives
    while len(list(gate.iterdir())) < racers and time.monotonic() < deadline:
        time.sleep(0.005)
    return local

mlflow.artifacts.download_artifacts = held
print(champion.version_dir(ws, "1"))
"""


def test_processes_downloading_a_version_at_once_leave_one_whole_copy(champion_ws, tmp_path: Path) -> None:
    """Each process downloads into a folder of its own and renames it into place: the first rename wins, the other
    copy is dropped, neither fails, and the cache holds exactly the registry's files (no mix, nothing left over)."""
    import shutil

    import mlflow

    from tests.support.files import digests

    shutil.rmtree(champion_ws.runs_dir / "served", ignore_errors=True)
    (tmp_path / "gate").mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(champion_ws.root), str(tmp_path / "gate"), "2"],
                               env=cli_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outcomes = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err[-2000:] for _, err in outcomes]
    cached = champion_ws.runs_dir / "served" / "v1"
    assert {out.strip() for out, _ in outcomes} == {str(cached)}
    assert sorted(p.name for p in cached.parent.iterdir()) == ["v1"]  # no partial or scratch folder left
    tracking.connect(champion_ws)  # models:/ resolves against this workspace's registry
    reference = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{champion_ws.settings.model.registered_name}/1", dst_path=str(tmp_path / "ref"),
        tracking_uri=champion_ws.tracking_uri)
    assert digests(cached) == digests(Path(reference)) and (cached / "MLmodel").exists()


USER, PASSWORD = "kaizen-admin", "mlflow-secret-4711"


def test_with_credentials_the_model_server_answers_only_those_who_send_them(champion_ws, texts, monkeypatch) -> None:
    """MLflow's own scoring app, from the same cached model folder, behind basic auth with MLflow's credentials:
    the command `kaizen serve-model` runs then (never showing the password), and that app answering."""
    from starlette.testclient import TestClient

    from kaizen.tasks.serving import guarded

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    command, env = champion.serve_command(champion_ws, port=5009, host="0.0.0.0")
    assert command[1:] == ["-m", "uvicorn", "--factory", "kaizen.tasks.serving.guarded:app", "--host", "0.0.0.0",
                           "--port", "5009"]
    assert env[guarded.MODEL_FOLDER] == str(champion.version_dir(champion_ws, "1"))
    for key in (guarded.MODEL_FOLDER, guarded.SERVED_VERSION, guarded.SERVED_HOST, guarded.WORKSPACE):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # MLflow's app sets it: undone after the test
    body = {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts[:4]]}}
    began = datetime.now(UTC)
    with TestClient(guarded.app()) as client:  # its lifespan's end: the capture writer writes what waits
        refused = client.post("/invocations", json=body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert client.post("/invocations", json=body, auth=(USER, "mlflow-secret-4712")).status_code == 401
        assert client.post("/invocations", json=body, headers={"Authorization": "Basic !!"}).status_code == 401
        answered = client.post("/invocations", json=body, auth=(USER, PASSWORD))
        assert client.get("/ping").status_code == 200  # a load balancer's health check needs no password
    assert answered.status_code == 200, answered.text
    local = champion.load_champion(champion_ws).predict(texts[:4])
    assert [p["prediction"] for p in answered.json()["predictions"]] == list(local["prediction"])
    captured = read_captures(champion_ws, since=began)  # the one answered request, none of those refused
    assert list(captured["text"]) == texts[:4] and list(captured["prediction"]) == list(local["prediction"])


def test_without_credentials_the_served_app_opens_on_loopback_only(champion_ws, monkeypatch) -> None:
    """The same app without basic auth, and `serve-model` checks the host, as the app itself does at its start."""
    from kaizen.tasks.runtime.security import Unprotected
    from kaizen.tasks.serving import guarded

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    command, env = champion.serve_command(champion_ws, port=5009)
    assert command[3:5] == ["--factory", "kaizen.tasks.serving.guarded:app"] and env[guarded.SERVED_HOST] == "127.0.0.1"
    monkeypatch.setenv(guarded.SERVED_HOST, "0.0.0.0")
    with pytest.raises(Unprotected, match="not a loopback address"):
        guarded.app()


def test_serve_model_off_loopback_without_credentials_refuses(champion_ws, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "short")
    result = CliRunner().invoke(app, ["serve-model", "--host", "0.0.0.0", "-w", str(champion_ws.root)])
    assert result.exit_code == 2 and "not a loopback address" in result.output, result.output
    assert "MLFLOW_TRACKING_USERNAME is not set" in result.output and "MLFLOW_TRACKING_PASSWORD has 5" in result.output
