"""kaizen installs like a library: the wheel built from this repository, installed into a fresh virtual
environment beside the project's, runs `kaizen --help`, `kaizen init` and one iteration of the loop with the
tiny model, and its lineage tags name the installed code, with no source checkout in sight."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, REPO, write_params


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of what the package is made of: setuptools builds in the source tree, leaving build/."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "params.yaml", "dvc.yaml", "kaizen", "tasks", "flows"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"symlinks": True} if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
                    str(out), str(source)], check=True, capture_output=True, text=True, cwd=out)
    (built,) = out.glob("kaizen-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_templates(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kaizen/__init__.py", "kaizen/templates/params.yaml", "kaizen/templates/dvc.yaml"} <= names
    # Every module of every wing and of the CLI package: pyproject.toml lists the packages one by one.
    sources = {f"kaizen/{p.relative_to(REPO).as_posix()}" for folder in ("tasks", "flows")
               for p in (REPO / folder).rglob("*.py")}
    assert "kaizen/tasks/ingest/collect.py" in sources and "kaizen/flows/cli/loop.py" in sources
    assert sources <= names, sorted(sources - names)
    assert not [n for n in names if n.split("/")[0] in ("tasks", "flows", "tests")]  # no generic top-level names
    params = zipfile.ZipFile(wheel).read("kaizen/templates/params.yaml").decode()
    assert params == (REPO / "params.yaml").read_text()  # the file itself, not the link


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed; the project's packages (torch and the rest) are
    borrowed through a .pth line rather than installed again, and that line runs none of the project's own .pth
    files, so its editable install of kaizen stays out."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--quiet", str(wheel)], check=True, capture_output=True, text=True)
    return venv


def test_the_installed_kaizen_is_the_wheel(fresh_venv: Path, tmp_path: Path) -> None:
    code = "import kaizen, kaizen.tasks.ingest.collect as c; print(kaizen.__file__); print(c.__file__)"
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True).stdout.split()
    assert all(Path(p).is_relative_to(fresh_venv) for p in out), out
    help_ = subprocess.run([str(fresh_venv / "bin" / "kaizen"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_.returncode == 0 and "init" in help_.stdout and "rollback" in help_.stdout


def test_init_and_one_iteration_from_the_wheel(fresh_venv: Path, tmp_path: Path, tiny_backbone: Path, domains,
                                                prefect_server) -> None:
    from prefect.settings import PREFECT_API_URL

    kaizen = str(fresh_venv / "bin" / "kaizen")
    env = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "KAIZEN_WORKSPACE")},
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    root = tmp_path / "ws"
    init = subprocess.run([kaizen, "init", str(root)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (root / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone)})
    ws = Workspace.open(root)
    land(ws, "movies.csv", sample(domains["movies"], 120, seed=4))

    run = subprocess.run([kaizen, "run", "--once", "-w", str(root)], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    stage_vars = (root / ".kaizen" / "stage.yaml").read_text()
    assert str(fresh_venv) in stage_vars  # the DVC stage runs the wheel's interpreter and code
    lock = (root / "dvc.lock").read_text()
    assert str(fresh_venv) in lock and "preprocess.py" in lock  # the stage's code is among its dependencies

    client = tracking.connect(ws)
    version = tracking.model_version(client, ws.settings.model.registered_name, "1")
    assert version.tags[TAG["code_version"]].startswith("0.1.0+src.")
    assert version.tags[TAG["code_commit"]] == version.tags[TAG["code_version"]]  # no checkout behind a wheel
    summary = json.loads(Path(client.download_artifacts(version.run_id, "summary.json")).read_text())
    assert summary["batch"] == "batch-0001" and summary["challenger_version"] == "1"
