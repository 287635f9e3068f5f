"""tasks.workspace: what `kaizen init` makes, as the README's first steps use it."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from kaizen.flows.cli import app
from kaizen.tasks.workspace.layout import Workspace


def test_init_makes_the_landing_zone_that_the_readme_copies_into(tmp_path: Path) -> None:
    root = tmp_path / "sentiment-loop"
    result = CliRunner().invoke(app, ["init", str(root)])
    assert result.exit_code == 0, result.output
    ws = Workspace.open(root)
    assert Path(ws.landing) == root / "data" / "landing" and str(Path(ws.landing)) in result.output.replace("\n", "")
    labels = tmp_path / "new-labels.csv"
    labels.write_text("text,label\nA fine film.,positive\n", encoding="utf-8")
    shutil.copy(labels, root / "data" / "landing" / "")  # `cp new-labels.csv DIR/data/landing/`
    assert (root / "data" / "landing" / "new-labels.csv").read_text(encoding="utf-8") == labels.read_text()
