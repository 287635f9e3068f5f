"""Fault injection: a process can be told to die, the way SIGKILL kills it, at a named point of its work.

kaizen runs unattended and can be killed anywhere (OOM killer, a reboot, a scheduler's timeout). Tests prove
that the next run finishes the work by running a step in a child process with `KAIZEN_KILL_AT=<point>` (or
`<point>@<n>`: the n-th time the point is reached) and then running it again. With the variable unset, a
kill point costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "KAIZEN_KILL_AT"
# PIDs a kill point takes with it: a job started by the loop (training) dies with the loop, the way a machine
# dies whole, when the point is reached inside the job.
KILL_ALSO = "KAIZEN_KILL_ALSO"

_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Die here, without any chance to clean up, if `KAIZEN_KILL_AT` names this point (and this hit)."""
    target = os.environ.get(ENV)
    if not target:
        return
    point, _, nth = target.partition("@")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or "1"):
        for pid in os.environ.get(KILL_ALSO, "").split():
            os.kill(int(pid), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
