"""Latency of the production route on this machine (a script that prints a table, not a test).

A fresh workspace with its own servers (`kaizen up`) and `kaizen serve`; then, one at a time, each of the
first files of the demo's real stream (demo-sized: `demo.rows_per_batch` rows, the real MiniLM unless --set
says otherwise) is submitted with `kaizen submit`'s function, and timed from the moment it lands:
  run created    the server's trigger fired on the kaizen.data.arrived event
  run started    the runner started the run (Running): what the trigger plus the runner's polling cost
  champion moved the `champion` alias moved to the run's model version (the run promoted it)
  run finished   the flow run's end
The servers and the serving process are stopped at the end, whatever happens.

    .venv/bin/python bench/latency.py [--files 2] [--rows 800] [--work bench/results/latency] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kaizen.tasks.workspace.settings import write_overrides

ROOT = Path(__file__).resolve().parent.parent
KAIZEN = str(Path(sys.executable).parent / "kaizen")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait(what: str, check, seconds: float, every: float = 0.25):
    deadline = time.monotonic() + seconds
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {seconds:.0f} s")
        time.sleep(every)
    return value


def measure(ws, client, mlflow_client, deployment_id, path: Path) -> dict:
    """Submit one file and time what follows, against the servers' own clocks (same machine)."""
    from datetime import UTC, datetime

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from kaizen.tasks.notify import arrivals
    from kaizen.tasks.registry import tracking

    name = ws.settings.model.registered_name
    before = tracking.model_by_alias(mlflow_client, name, tracking.CHAMPION)
    landed = datetime.now(UTC)
    arrivals.submit(ws, [path])

    def this_run():
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        return next((r for r in runs if r.parameters.get("files") == [path.name]), None)

    run = wait("flow run", this_run, 120)
    moved = None
    while True:  # poll the alias and the run until the run is over
        champion = tracking.model_by_alias(mlflow_client, name, tracking.CHAMPION)
        if moved is None and champion and (before is None or champion.version != before.version):
            moved = datetime.now(UTC)
        run = client.read_flow_run(run.id)
        if run.state_type.value in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.25)
    since = lambda t: None if t is None else (t - landed).total_seconds()  # noqa: E731
    return {"file": path.name, "state": run.state_name, "created": since(run.created),
            "started": since(run.start_time), "moved": since(moved), "finished": since(run.end_time)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2, help="stream files to submit, one after the other")
    parser.add_argument("--rows", type=int, default=None, help="rows per file (default: params.yaml demo)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "latency")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override")
    args = parser.parse_args()

    from kaizen.tasks.workspace.environment import apply_environment
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import init_workspace

    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "ws"
    init_workspace(root)
    write_overrides(root / "params.yaml", {"servers.prefect_port": free_port(), "servers.mlflow_port": free_port(),
                      **{k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}})
    ws = Workspace.open(root)
    os.environ["PREFECT_HOME"] = str(ws.prefect_home)
    import pandas as pd

    from kaizen.tasks.operate import demo

    if (ROOT / ".kaizen" / "sources").is_dir():  # the packages `make demo` fetched: no second download
        shutil.copytree(ROOT / ".kaizen" / "sources", ws.sources_dir)
    stream = demo.prepare_stream(ws, args.rows)[: args.files]
    rows = len(pd.read_csv(stream[0]))

    started = time.monotonic()
    subprocess.run([KAIZEN, "up", "-w", str(root)], check=True, capture_output=True)
    up_seconds = time.monotonic() - started
    apply_environment(ws)  # PREFECT_API_URL of the servers just started; before prefect is imported
    with open(args.work / "serve.log", "wb") as log:
        serve = subprocess.Popen([KAIZEN, "serve", "-w", str(root)], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    results = []
    try:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from kaizen.flows.deployment import FLOW_NAME, deployment_name
        from kaizen.tasks.registry import tracking

        with get_client(sync_client=True) as client:
            def deployed():
                try:
                    return client.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(ws)}")
                except ObjectNotFound:
                    return None

            deployment = wait("deployment", deployed, 300, every=1)
            time.sleep(3)  # the trigger's automation is created right after the deployment
            mlflow_client = tracking.connect(ws)
            for path in stream:
                results.append(measure(ws, client, mlflow_client, deployment.id, path))
                print(results[-1], flush=True)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=60)
        subprocess.run([KAIZEN, "down", "-w", str(root)], check=True, capture_output=True)

    fmt = lambda v: "–" if v is None else f"{v:7.1f}"  # noqa: E731
    print(f"\nkaizen production latency: {platform.node()}, {os.cpu_count()} CPU cores, backbone "
          f"{ws.settings.model.backbone}, {rows} rows per file; `kaizen up` took {up_seconds:.1f} s")
    print(f"schedule.poll_seconds {ws.settings.schedule.poll_seconds}, servers.slot_wait_seconds "
          f"{ws.settings.servers.slot_wait_seconds}; seconds after the file landed:")
    print(f"{'file':24} {'state':10} {'run created':>12} {'run started':>12} {'champion moved':>15} {'run finished':>13}")
    for r in results:
        print(f"{r['file']:24} {r['state']:10} {fmt(r['created']):>12} {fmt(r['started']):>12} "
              f"{fmt(r['moved']):>15} {fmt(r['finished']):>13}")


if __name__ == "__main__":
    main()
