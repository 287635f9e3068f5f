"""Running the training job (tasks/training/train_job.py) and following it: on this machine (in this process, or
in processes of their own through `accelerate launch` past one), or elsewhere as a run of a Prefect deployment
(`train.deployment`, for example a Kubernetes Job on a GPU node that mounts the loop's folder: a volume both share).

Either way the job's folder is the whole interface: this side writes the inputs, reads `epochs.jsonl` as the
job appends to it (each epoch is logged while training goes on) and `result.json` at the end.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.faults import KILL_ALSO
from kaizen.tasks.workspace.settings import TrainSettings

EpochLogger = Callable[[int, dict[str, float]], None]


class JobFailed(RuntimeError):
    """The training job did not finish; the message says how and where its log is."""


def command(job: Path, processes: int) -> list[str]:
    """The job on this machine: one process, or `processes` of them through accelerate launch."""
    return [sys.executable, "-m", "kaizen.tasks.training.train_job", str(job)] + (
        ["--processes", str(processes)] if processes > 1 else [])


def _log_tail(job: Path, lines: int = 40) -> str:
    log = job / "train.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return f"{log} ends:\n" + "\n".join(text.splitlines()[-lines:])


def run_here(job: Path, processes: int, follow: Callable[[], None] = lambda: None) -> None:
    """Run the job on this machine and wait, calling `follow` as epochs end. One process: in this one, which has
    torch and transformers imported already (a process of its own would spend 6 to 10 s of CPU importing them
    again, every iteration). Several: a process of its own through accelerate launch; if this process is
    stopped, the job is stopped with it (and on Linux the job dies with this process even on SIGKILL)."""
    if processes == 1:
        _run_in_process(job, follow)
        return
    # A kill point reached inside the job stands for the whole machine dying: it takes this process too.
    env = child_environment(None, extra={KILL_ALSO: str(os.getpid())})
    with open(job / "train.log", "wb") as log:
        proc = subprocess.Popen(command(job, processes), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            follow()
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        raise JobFailed(f"the training job failed (exit {proc.returncode}); {_log_tail(job)}")


@contextmanager
def job_output(log: TextIO) -> Iterator[None]:
    """This process's output into `log` while a job runs in it, as a process of its own would write it: stdout,
    stderr, and the Hugging Face libraries' log handler. That handler holds the stream it was made with (made on
    first use, inside the first job), so it is pointed at `log` and back: left as it was, every later warning
    went to the closed log of the first job ("I/O operation on closed file")."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger()  # the library's handler, made now (if it was not) on this process's stderr
    handlers = [h for h in logging.getLogger("transformers").handlers if isinstance(h, logging.StreamHandler)]
    with redirect_stdout(log), redirect_stderr(log):
        before = [h.setStream(log) for h in handlers]
        try:
            yield
        finally:
            for handler, stream in zip(handlers, before, strict=True):
                handler.setStream(stream)


def _run_in_process(job: Path, follow: Callable[[], None]) -> None:
    """The job's own code in this process, its output in `train.log` as from a process of its own. A stop from
    outside (the iteration's timeout, Ctrl-C) passes through as it is; any other failure is the job's."""
    from kaizen.tasks.training import train_job

    with open(job / "train.log", "w", encoding="utf-8") as log, job_output(log):
        try:
            train_job.run(job, after_epoch=follow)
        except TimeoutError:
            raise
        except Exception as exc:
            log.write(f"{type(exc).__name__}: {exc}\n")
            log.flush()
            raise JobFailed(f"the training job failed: {type(exc).__name__}: {str(exc)[:500]}; "
                            f"{_log_tail(job)}") from exc


def _run_deployment(job: Path, deployment: str, processes: int, follow: Callable[[], None]) -> None:
    """A run of the Prefect deployment `deployment` (flows/training.py) on `job`, followed until it ends."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    # Prefect types its sync/async dispatch as returning the run or a coroutine; called from sync code, the run.
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        deployment, parameters={"job": str(job), "processes": processes}, timeout=0, as_subflow=False)
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(run.id).state) or not state.is_final():
            follow()
            time.sleep(1.0)
    if not state.is_completed():
        raise JobFailed(f"the training run {run.name} of {deployment} ended {state.name}: {state.message}")


def run(job: Path, settings: TrainSettings, log_epoch: EpochLogger | None) -> list[dict[str, float]]:
    """Run the job where `settings` say, passing each epoch's metrics to `log_epoch` as its line appears;
    the epochs' metrics once it has finished."""
    epochs = job / "epochs.jsonl"
    seen: list[dict[str, float]] = []

    def follow() -> None:
        for line in (epochs.read_text(encoding="utf-8").splitlines() if epochs.exists() else [])[len(seen):]:
            row = json.loads(line)
            seen.append(row)
            if log_epoch:
                log_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})

    if settings.deployment:
        _run_deployment(job, settings.deployment, settings.processes, follow)
    else:
        run_here(job, settings.processes, follow)
    follow()
    if not (job / "result.json").exists():
        raise JobFailed(f"the training job ended without its result.json; {_log_tail(job)}")
    return seen
