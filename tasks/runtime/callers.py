"""What a caller of the Prefect API may steer in a run of kaizen's deployments: whoever may start a run may give it
any parameters, so a deployed run takes its folders from its deployment, never from the caller.

- `workspace` and `join` (the loop, batch scoring, the training job) are fixed when the deployment is made
  (flows/deployment.py): a run asking for others is refused (`dvc repro` runs whatever that folder's dvc.yaml says).
- Batch scoring's `source` and `out` lie under one of `serving.roots` (none: the workspace's own folder), never in
  the loop's own state; `out` never in its data or landing zone either.
- The training job's folder lies in the workspace's jobs folder (Workspace.runs_dir, tasks/training/train.py).

A run outside any deployment (`kaizen run`, `kaizen score`, a test calling the flow) is its local user's, and is
not restricted. The deployment's stored parameters are the reference: changing them is editing the deployment,
which is deploying, not calling.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kaizen.tasks.workspace.layout import Workspace

LOCAL_SCHEMES = ("file", "local")  # fsspec's names for this machine's files


class Refused(PermissionError):
    """A deployed run asked for something its caller may not steer; the message says what and why."""


def deployment_parameters() -> tuple[str, dict[str, Any]] | None:
    """This run's deployment (its name) and the parameters stored on it; None outside any deployment. Not
    prefect.runtime.deployment.parameters: those are the run's own, whatever its caller gave."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import deployment

    if not deployment.id:
        return None
    with get_client(sync_client=True) as client:
        found = client.read_deployment(UUID(deployment.id))
    return found.name, dict(found.parameters or {})


def deployed(flow_fn: Callable[..., Any], **asked: Any) -> bool:
    """Whether this run belongs to a deployment. If it does, each of `asked` (a parameter of `flow_fn` and this
    run's value of it) must be the deployment's value, or the flow's default where the deployment sets none;
    else Refused."""
    found = deployment_parameters()
    if found is None:
        return False
    name, stored = found
    signature = inspect.signature(getattr(flow_fn, "fn", flow_fn))  # a Prefect flow wraps its function
    for key, value in asked.items():
        expected = stored.get(key, signature.parameters[key].default)
        if value != expected:
            raise Refused(f"this run of the deployment {name!r} asks for {key}={value!r}, but the deployment works "
                          f"with {key}={expected!r}: a run may not choose another folder or loop. Deploy one for "
                          "that folder there (`kaizen serve` or `kaizen deploy --pool` in it)")
    return True


def normalised(ws: Workspace, location: str) -> str:
    """`location` as it is checked and then used: a local path (`file://` or `local://` ones too) absolute, with
    `..` and symlinks resolved, a relative one taken in the workspace; a URL with its scheme in lower case and no
    trailing slash. Refused: a chained URL (`a::b`), a query or fragment, `.`/`..` segments or backslashes in a
    URL (a server may resolve them, encoded or not)."""
    if "::" in location:
        raise Refused(f"{location!r}: a chained URL (`::`) is not accepted in a deployed run")
    scheme, sep, rest = location.partition("://")
    if not sep or scheme.lower() in LOCAL_SCHEMES:
        return os.path.realpath(ws.root / (rest if sep else location))
    parts = urlsplit(location)
    segments = unquote(parts.path).split("/")  # decoded first: `%2F..%2F` climbs too, on a server that decodes
    if parts.query or parts.fragment or "\\" in unquote(location) or {".", ".."} & set(segments):
        raise Refused(f"{location!r}: a URL with a query, a fragment, a backslash or a `.`/`..` segment is not "
                      "accepted in a deployed run")
    return f"{scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def under(location: str, root: str) -> bool:
    """Whether the normalised `location` is the normalised `root` or lies inside it."""
    if "://" in root or "://" in location:
        return location == root or location.startswith(root.rstrip("/") + "/")
    return os.path.commonpath([root, location]) == root


def _placed(location: str, what: str, roots: list[str], never: list[str]) -> str:
    if not any(under(location, root) for root in roots):
        raise Refused(f"{what} {location!r} lies outside serving.roots ({', '.join(roots)}): a deployed scoring run "
                      "reads and writes only there (params.yaml `serving.roots`)")
    if inside := next((n for n in never if under(location, n)), None):
        raise Refused(f"{what} {location!r} lies in {inside!r}, the loop's own: a deployed scoring run may not "
                      f"{'read' if what == 'source' else 'write'} there")
    return location


def _reachable(folder: str) -> list[str]:
    """Every file and folder a reader of `folder` can reach, links followed, each as its real path (each real
    folder walked once: a link cycle ends)."""
    found, walked = [], set()
    for top, folders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in walked:
            folders[:] = []
            continue
        walked.add(real)
        found += [real, *(os.path.realpath(os.path.join(top, name)) for name in files)]
    return found


def scoring_locations(ws: Workspace, source: str, out: str) -> tuple[str, str]:
    """`source` and `out` of a deployed scoring run, normalised, each under one of `serving.roots`. `source` is
    never in the loop's state (its databases, the servers' credentials) or git's and DVC's folders; `out` not
    there, nor in its data or landing zone (a file written there could become training data). Everything a
    local `source` folder holds is checked where it really is, so a link inside it leads nowhere else."""
    roots = [normalised(ws, root) for root in ws.settings.serving.roots] or [normalised(ws, ".")]
    private = [normalised(ws, str(p)) for p in (ws.state_dir, ws.root / ".git", ws.root / ".dvc")]
    source = _placed(normalised(ws, source), "source", roots, private)
    if "://" not in source and os.path.isdir(source):
        for path in _reachable(source):
            _placed(path, "source", roots, private)
    loop_data = [normalised(ws, str(ws.data_dir)), normalised(ws, ws.landing)]
    return source, _placed(normalised(ws, out), "out", roots, private + loop_data)


def job_folder(ws: Workspace, job: str) -> Path:
    """A deployed training run's job folder, resolved; refused unless it lies in the workspace's jobs folder."""
    folder, jobs = normalised(ws, job), normalised(ws, str(ws.runs_dir))
    if "://" in folder or folder == jobs or not under(folder, jobs):
        raise Refused(f"the training job {job!r} is not in the jobs folder {jobs} of the workspace {ws.root}: a "
                      "deployed training run works only on the jobs the loop writes there")
    return Path(folder)
