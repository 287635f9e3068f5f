"""tasks.jobs: the training job run and followed on this machine, or elsewhere as a run of a real Prefect
deployment of flows/training.py (served here, standing for a worker on a GPU node)."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from kaizen.tasks.training.jobs import JobFailed, job_output
from kaizen.tasks.training.train import fine_tune
from tests.support.files import sample
from tests.support.processes import start, stop, wait_until
from tests.support.services import runs_of
from tests.support.training import LABELS, MODEL, TRAIN


@pytest.fixture(scope="module")
def rows(domains):
    frame = sample(domains["movies"], 120, seed=6)
    return frame.iloc[:100], frame.iloc[100:]


def test_library_warnings_after_a_job_in_this_process_reach_its_stderr_not_the_jobs_closed_log(
        tmp_path: Path, capsys) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging._reset_library_root_logger()  # as in a new process: the library's handler is made on first use
    try:
        with open(tmp_path / "train.log", "w", encoding="utf-8") as log, job_output(log):
            hf_logging.get_logger("transformers.kaizen_test").warning("said inside the job")
        hf_logging.get_logger("transformers.kaizen_test").warning("said after the job")
        said = capsys.readouterr().err
    finally:
        hf_logging._reset_library_root_logger()  # not left on pytest's captured stream
    assert "said inside the job" in (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "said after the job" in said and "Logging error" not in said and "said inside" not in said


def test_a_failing_job_says_why_with_its_log(tmp_path: Path, rows) -> None:
    train, val = rows
    with pytest.raises(JobFailed, match=r"the training job failed.*; .*train\.log ends:(.|\n)*no-such-model"):
        fine_tune(str(tmp_path / "no-such-model"), train, val, LABELS, model=MODEL,
                  train_settings=TRAIN, epochs=1, out_dir=tmp_path / "out")


def test_training_runs_as_a_run_of_its_deployment(tiny_backbone: Path, rows, tmp_path: Path, prefect_server) -> None:
    from prefect.settings import PREFECT_API_URL

    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import template
    from tests.support.services import prefect

    name = f"test-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "serve.log"
    (tmp_path / "ws").mkdir()  # the loop's folder as the GPU machine sees it: a deployed run's jobs lie in it
    shutil.copy(template("params.yaml"), tmp_path / "ws" / "params.yaml")
    out = Workspace.open(tmp_path / "ws").runs_dir / "batch-0001"
    served = start([sys.executable, "-c", "from kaizen.flows.training import train_job; "
                    f"train_job.serve(name={name!r}, parameters={{'workspace': {str(tmp_path / 'ws')!r}}})"], log, env)
    try:
        with prefect(PREFECT_API_URL.value()) as client:
            wait_until("the served deployment", lambda: _exists(client, f"kaizen-train/{name}"), 120, every=1,
                       proc=served, log=log)
        train, val = rows
        logged: list[int] = []
        settings = TRAIN.model_copy(update={"deployment": f"kaizen-train/{name}"})
        result = fine_tune(str(tiny_backbone), train, val, LABELS, model=MODEL, train_settings=settings, epochs=2,
                           out_dir=out, log_epoch=lambda e, m: logged.append(e))
        with prefect(PREFECT_API_URL.value()) as client:  # it ran over there, as a run of the deployment
            (run,) = runs_of(client, client.read_deployment_by_name(f"kaizen-train/{name}").id)
    finally:
        stop(served)
    assert run.state.is_completed() and run.parameters == {"job": str(out / "job"), "processes": 1,
                                                           "workspace": str(tmp_path / "ws")}
    assert logged == [1, 2] and (result.model_dir / "model.safetensors").exists()
    assert "rank 0 of 1 processes on cpu" in (out / "job" / "train.log").read_text()


def _exists(client, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False
