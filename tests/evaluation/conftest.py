"""A workspace whose registry holds versions of the tiny model, for the tests of the gate's records and alias
moves (test_promote.py, test_best.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    """A workspace whose registry holds two versions of the tiny model (logging a model costs seconds: once)."""
    from kaizen.tasks.workspace.layout import Workspace
    from tests.support.workspaces import FAST, new_workspace, write_params

    root = new_workspace(tmp_path_factory.mktemp("registered") / "ws").root
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone)})
    ws = Workspace.open(root)
    client = tracking.connect(ws)
    exp = tracking.experiment_id(client, ws)
    for batch in ("batch-0001", "batch-0002"):
        tracking.register_model(client, ws, client.create_run(exp).info.run_id, tiny_backbone, {TAG["batch"]: batch})
    return root


@pytest.fixture
def registered(registry_template: Path, tmp_path: Path):
    """A copy of the template: its own tracking store and aliases (the artifacts stay where they were logged)."""
    import shutil

    from kaizen.tasks.workspace.layout import Workspace

    root = tmp_path / "ws"
    shutil.copytree(registry_template, root, symlinks=True)
    ws = Workspace.open(root)
    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    return ws, client, [tracking.model_version(client, name, v) for v in ("1", "2")]
