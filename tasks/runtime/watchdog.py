"""A watchdog that stops a process's helper children when that process dies, however it dies (SIGKILL, the OOM
killer): the temporary Prefect server of a `kaizen run` must not outlive it.

`python -m kaizen.tasks.runtime.watchdog MARKER` is started by the parent before the helpers. While the parent lives it
notes, several times a second, the parent's children whose command line holds MARKER (with their start time);
once the parent is gone (this process is handed to another parent) it ends those that still run (SIGTERM, then
SIGKILL after 10 s) and exits. The start time makes sure a PID the system has since given to another program is
never signalled. Light on purpose: it imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil


def helpers(parent: psutil.Process, marker: str) -> dict[int, float]:
    """The parent's children whose command line holds `marker`: pid -> start time."""
    found = {}
    for child in parent.children():
        try:
            if child.pid != os.getpid() and marker in " ".join(child.cmdline()):
                found[child.pid] = child.create_time()
        except psutil.Error:  # gone meanwhile, or a zombie
            continue
    return found


def watch(parent_pid: int, marker: str, every: float = 0.2) -> list[int]:
    """Note the parent's helpers until it dies; then end the ones still running. Returns their pids."""
    parent = psutil.Process(parent_pid)
    noted: dict[int, float] = {}
    while os.getppid() == parent_pid:
        try:
            noted.update(helpers(parent, marker))
        except psutil.NoSuchProcess:
            break
        time.sleep(every)
    left = []
    for pid, started in noted.items():
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) < 1.0:
                left.append(process)
        except psutil.NoSuchProcess:
            continue
    for process in left:
        process.terminate()
    _, alive = psutil.wait_procs(left, timeout=10)
    for process in alive:
        process.kill()
    return [p.pid for p in left]


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal reaches us too: outlive it, then clean up
    watch(os.getppid(), sys.argv[1])
