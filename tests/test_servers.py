"""tasks.servers: the temporary Prefect server of a `kaizen run` never outlives it, and the test session itself
leaves no process behind (tests/conftest.py checks that at the end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from kaizen.tasks.servers import TEMPORARY_SERVER_MARK
from tests.conftest import SESSION_MARK, leftover_processes
from tests.helpers import land, sample
from tests.servers import KAIZEN, cli_env, wait_until


def temporary_servers(parent: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in parent.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if TEMPORARY_SERVER_MARK in line and "uvicorn" in line:
            found.append(child)
    return found


def test_a_kaizen_run_killed_with_sigkill_leaves_no_temporary_server(make_workspace, domains) -> None:
    ws = make_workspace()
    land(ws, "movies.csv", sample(domains["movies"], 40, seed=50))
    env = {**cli_env(), "PREFECT_HOME": str(ws.state_dir / "prefect-run")}
    run = subprocess.Popen([KAIZEN, "run", "-w", str(ws.root)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(run.pid)
        (server,) = wait_until("the run's temporary Prefect server", lambda: temporary_servers(parent), 180, every=0.5)
        time.sleep(1)  # starting: it does not answer yet

        os.kill(run.pid, signal.SIGKILL)  # the OOM killer: this process only, no chance to clean up
        run.wait()

        assert wait_until("the orphaned server to stop", lambda: not server.is_running(), 30, every=0.5)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def test_the_session_check_finds_a_process_a_test_left_running() -> None:
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert left.pid in {p.pid for p in leftover_processes()}
        stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                    env={k: v for k, v in os.environ.items() if k != SESSION_MARK[0]})
        try:
            assert stranger.pid not in {p.pid for p in leftover_processes()}  # not ours: never touched
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        left.kill()
        left.wait()
