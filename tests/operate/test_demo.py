"""tasks.demo: starting over (`kaizen demo --fresh`) only when nothing else is using the workspace."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.tasks.workspace.layout import hold


def test_demo_fresh_refuses_while_a_loop_or_a_server_runs(copy_workspace) -> None:
    ws = copy_workspace({})
    ws.ledger_db.parent.mkdir(parents=True, exist_ok=True)
    ws.ledger_db.write_bytes(b"state")
    runner = CliRunner()

    with hold(ws, "loop", wait=False):  # a loop is running
        result = runner.invoke(app, ["demo", "--fresh", "-w", str(ws.root)])
    assert result.exit_code == 2 and "another loop is running" in result.output, result.output
    assert ws.ledger_db.exists()

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # as `kaizen up` records one
    try:
        ws.servers_dir.mkdir(parents=True, exist_ok=True)
        (ws.servers_dir / "mlflow.json").write_text(json.dumps({
            "name": "mlflow", "url": "http://127.0.0.1:1", "pid": server.pid,
            "create_time": psutil.Process(server.pid).create_time(), "log": "-"}))
        result = runner.invoke(app, ["demo", "--fresh", "-w", str(ws.root)])
    finally:
        server.kill()
        server.wait()
    assert result.exit_code == 2 and "mlflow server(s)" in result.output and "kaizen down" in result.output
    assert ws.ledger_db.exists()
