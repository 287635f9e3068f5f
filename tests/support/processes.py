"""Processes of the tests: each is started in a process group of its own with its output in a log, and stopped
by that group, never by name; waiting for one names it, and its log's tail, if it died first."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from kaizen.tasks.workspace.environment import kept

KAIZEN = str(Path(sys.executable).parent / "kaizen")  # the CLI of the environment the tests run in

T = TypeVar("T")


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together while chosen, so none repeats)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(n)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port() -> int:
    return free_ports(1)[0]


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`args` in a process group of its own, its output appended to `log`, reading nothing."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30.0) -> None:
    """Signal the process group of `proc` (started in one of its own), then SIGKILL it after `grace` seconds
    (a worker wants two signals)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _tail(log: Path | None) -> str:
    return f"; its log ends:\n{log.read_text(errors='replace')[-3000:]}" if log is not None and log.exists() else ""


def wait_until(what: str, check: Callable[[], T], seconds: float, every: float = 2.0,
               proc: subprocess.Popen | None = None, log: Path | None = None) -> T:
    """`check()` once it is true, asked every `every` seconds for up to `seconds`. With `proc`: it fails at once
    should that process exit first. Either failure ends with the tail of `log`, where given."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}){_tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}{_tail(log)}")
        time.sleep(every)


def cli_env() -> dict[str, str]:
    """This process's environment minus what would point a command at another server or workspace name."""
    drop = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KAIZEN_WORKSPACE_ID")
    return {k: v for k, v in os.environ.items() if k not in drop}


def kaizen(*args: str, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """`kaizen ARGS` in a subprocess (with cli_env() unless `env` is given); with `check`, it must succeed."""
    result = subprocess.run([KAIZEN, *args], capture_output=True, text=True, timeout=timeout, env=env or cli_env())
    if check:
        assert result.returncode == 0, f"kaizen {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables in this process's environment for a while (session fixtures cannot use monkeypatch)."""
    with kept(*values):
        os.environ.update(values)
        yield
