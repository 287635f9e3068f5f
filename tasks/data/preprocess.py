"""preprocess: the DVC stages that turn accepted batches into per-batch splits and the replay sample.

`dvc repro` runs them in the workspace (dvc.yaml): `python -m kaizen.tasks.data.preprocess split <batch>` once per
batch (a `foreach` stage: a new batch leaves every earlier batch's splits and md5s as they were, and costs only
its own split), and `python -m kaizen.tasks.data.preprocess replay <batch>` for the batch being learned. Everything is
a pure function of the inputs and the `preprocess`/`replay` params, seeded per batch, so any data version can be
rebuilt byte for byte.

Output: `data/prepared/<batch>/{train,val,test}.parquet` per batch, and `data/replay/replay.parquet`: the sample
of earlier trusted batches' train splits that the batch being learned is mixed with. Duplicates across batches
never reach here: collect refuses a row whose text an earlier file already brought (the same `text_key`). A
batch's labels are split as corrected: `data/corrections/<batch>.parquet` (tasks/ingest/corrections.py) gives
the latest label of each corrected text, applied before the split; the accepted batch stays as ingested.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.formats.text import normalize_text, text_key
from kaizen.tasks.workspace.repo import STAGE_ERRORS
from kaizen.tasks.workspace.settings import PreprocessSettings, ReplaySettings

SPLITS = ("train", "val", "test")


def batch_seed(seed: int, batch_id: str) -> int:
    """A seed per batch, so adding batches never reshuffles earlier ones."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{batch_id}".encode()).digest()[:4], "little")


def apportion(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """`total` cut into whole parts proportional to `weights` (largest remainder, ties to the earlier part),
    none above its cap; what a capped part cannot take goes to the others. Sums to min(total, sum(caps))."""
    alloc = [0] * len(caps)
    open_ = [i for i, cap in enumerate(caps) if cap > 0 and weights[i] > 0]
    total = min(total, sum(caps[i] for i in open_))
    while total > 0 and open_:
        weight = sum(weights[i] for i in open_)
        exact = {i: total * weights[i] / weight for i in open_}
        capped = [i for i in open_ if exact[i] >= caps[i]]
        if capped:  # these take all they have; share the rest among the others
            for i in capped:
                alloc[i] = caps[i]
                total -= caps[i]
            open_ = [i for i in open_ if i not in capped]
            continue
        for i in open_:
            alloc[i] = int(exact[i])
        left = total - sum(alloc[i] for i in open_)
        for i in sorted(open_, key=lambda i: (alloc[i] - exact[i], i))[:left]:
            alloc[i] += 1
        break
    return alloc


def split_batch(batch: pd.DataFrame, settings: PreprocessSettings, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/val/test split: each label is shuffled and cut by the same fractions."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[pd.DataFrame]] = {name: [batch.iloc[:0]] for name in SPLITS}
    for _, group in batch.groupby("label", sort=True):
        group = group.iloc[rng.permutation(len(group))]
        n_test = int(round(len(group) * settings.test_fraction))
        n_val = int(round(len(group) * settings.val_fraction))
        if len(group) >= 3:  # every split of a label with a handful of rows still gets one
            n_test, n_val = max(n_test, 1), max(n_val, 1 if settings.val_fraction > 0 else 0)
        parts["test"].append(group.iloc[:n_test])
        parts["val"].append(group.iloc[n_test : n_test + n_val])
        parts["train"].append(group.iloc[n_test + n_val :])
    if sum(len(f) for f in parts["test"]) > settings.max_test_rows:  # keep the label balance while capping
        # Each label's test rows are already shuffled: keep the first rows of each, in proportion.
        frames = [f for f in parts["test"] if len(f)]
        sizes = [len(f) for f in frames]
        keep = apportion(settings.max_test_rows, [float(n) for n in sizes], sizes)
        parts["test"] = [batch.iloc[:0]] + [f.iloc[:n] for f, n in zip(frames, keep, strict=True)]
        parts["train"] += [f.iloc[n:] for f, n in zip(frames, keep, strict=True)]  # cut rows are learned from
    return {name: pd.concat(frames).sort_index().reset_index(drop=True) for name, frames in parts.items()}


def draw_replay(pool: dict[str, pd.DataFrame], n_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of earlier train splits, an equal share per batch, label-proportional within each.

    Exactly min(n_rows, rows in the pool) rows: a batch too small for its share gives all it has and the
    others make up the difference."""
    batch_ids = sorted(pool)
    takes = apportion(n_rows, [1.0] * len(batch_ids), [len(pool[b]) for b in batch_ids])
    if sum(takes) == 0:
        return pd.DataFrame(columns=["text", "label", "batch"])
    rng = np.random.default_rng(seed)
    frames = []
    for batch_id, take in zip(batch_ids, takes, strict=True):
        groups = [group for _, group in pool[batch_id].groupby("label", sort=True)]
        sizes = [len(group) for group in groups]
        for group, n in zip(groups, apportion(take, [float(s) for s in sizes], sizes), strict=True):
            frames.append(group.iloc[rng.choice(len(group), size=n, replace=False)].assign(batch=batch_id))
    replay = pd.concat(frames, ignore_index=True)
    return replay.iloc[rng.permutation(len(replay))].reset_index(drop=True)


def corrected(batch: pd.DataFrame, corrections: pd.DataFrame) -> pd.DataFrame:
    """The batch with the label of each corrected text replaced, the text matched by its dedup key as collect
    matched it (corrections: key, label)."""
    if corrections.empty:
        return batch
    labels = batch["text"].map(text_key).map(dict(zip(corrections["key"], corrections["label"], strict=True)))
    return batch.assign(label=labels.fillna(batch["label"]))


def read_corrections(path: Path) -> pd.DataFrame:
    """A batch's corrections as the loop wrote them for this stage (none in a workspace whose pipeline predates
    them: its stage does not list the file)."""
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=["key", "label"])


def split_one(batch: pd.DataFrame, batch_id: str, pre: PreprocessSettings) -> dict[str, pd.DataFrame]:
    """One accepted batch -> its train, val and test splits: texts normalised, duplicates within it dropped. A
    batch that keeps capture ids (rows labeled from a queue of `kaizen select`) keeps them in its splits."""
    frame = batch[[c for c in ("text", "label", "capture_id") if c in batch.columns]].copy()
    frame["text"] = frame["text"].map(lambda t: normalize_text(t, pre.lowercase))
    frame = frame[~frame["text"].map(text_key).duplicated()].reset_index(drop=True)
    return split_batch(frame, pre, batch_seed(pre.seed, batch_id))


def replay_for(target: str, train_splits: dict[str, pd.DataFrame], n_train: int, pre: PreprocessSettings,
               replay: ReplaySettings, suspect: frozenset[str] = frozenset()) -> pd.DataFrame:
    """The replay sample of `target`: drawn from the train splits of the batches before it whose labels are
    trusted (a `suspect` batch never enters replay), `replay.ratio` rows per training row of `target`."""
    pool = {b: frame for b, frame in train_splits.items() if b < target and b not in suspect}
    n_replay = min(replay.max_rows, int(round(replay.ratio * n_train)))
    return draw_replay(pool, n_replay, batch_seed(pre.seed, f"replay:{target}"))


def prepare(batches: dict[str, pd.DataFrame], pre: PreprocessSettings, replay: ReplaySettings,
            suspect: frozenset[str] = frozenset()) -> dict[str, dict[str, pd.DataFrame]]:
    """What the stages make of a whole stream at once (for tests and benchmarks): per batch its splits and,
    after the first, the replay sample it would be learned with."""
    prepared = {b: split_one(batches[b], b, pre) for b in sorted(batches)}
    trains = {b: splits["train"] for b, splits in prepared.items()}
    for batch_id in list(prepared)[1:]:
        prepared[batch_id]["replay"] = replay_for(batch_id, trains, len(trains[batch_id]), pre, replay, suspect)
    return prepared


def write_splits(splits: dict[str, pd.DataFrame], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.to_parquet(out_dir / f"{name}.parquet", index=False)
    (out_dir / "summary.json").write_text(json.dumps({n: len(f) for n, f in splits.items()}, indent=2) + "\n")


def write_prepared(prepared: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> None:
    """Every batch's splits under `out_dir`, as the split stages lay them out."""
    for batch_id, splits in prepared.items():
        write_splits({n: f for n, f in splits.items() if n in SPLITS}, out_dir / batch_id)


def read_suspect(trust_file: Path) -> frozenset[str]:
    """The batches whose labels are suspect, as the loop recorded them for this stage (none before any)."""
    if not trust_file.exists():
        return frozenset()
    return frozenset(json.loads(trust_file.read_text(encoding="utf-8"))["suspect"])


def main(argv: list[str]) -> None:
    """The DVC stages: `split <batch>` writes data/prepared/<batch>/; `replay <batch>` writes data/replay/ for the
    batch being learned (empty for the first one)."""
    import shutil

    from kaizen.tasks.workspace.layout import Workspace

    if len(argv) != 2 or argv[0] not in ("split", "replay"):
        raise SystemExit("usage: python -m kaizen.tasks.data.preprocess split|replay BATCH")
    stage, batch_id = argv
    ws = Workspace.open(Path.cwd())
    pre = ws.settings.preprocess
    if stage == "split":
        out = ws.prepared_dir / batch_id
        shutil.rmtree(out, ignore_errors=True)  # DVC owns this folder: rebuild it whole
        batch = corrected(pd.read_parquet(ws.batch_file(batch_id)), read_corrections(ws.corrections_file(batch_id)))
        write_splits(split_one(batch, batch_id, pre), out)
    else:
        # Only batches still accepted: a batch set aside as failed leaves its old split folder behind (DVC keeps
        # the outputs of a stage that is gone), and its rows must not come back through replay.
        trains = {p.parent.name: pd.read_parquet(p) for p in sorted(ws.prepared_dir.glob("batch-*/train.parquet"))
                  if ws.batch_file(p.parent.name).exists()}
        n_train = len(trains.get(batch_id, ()))
        sample = replay_for(batch_id, trains, n_train, pre, ws.settings.replay, read_suspect(ws.trust_file))
        shutil.rmtree(ws.replay_dir, ignore_errors=True)
        write_splits({"replay": sample}, ws.replay_dir)
        (ws.replay_dir / "target.json").write_text(json.dumps({"batch": batch_id}) + "\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
        # Done, its outputs closed: leave without the interpreter's teardown, during which Arrow's parquet threads
        # can still be alive and abort the process (SIGABRT, "terminate called without an active exception";
        # apache/arrow#34314), failing a stage whose work was complete. Seen once in the suite on pyarrow 26. The
        # exit handlers still run first (logging's flush, a coverage measurement's save), as at a normal exit.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except BaseException:
        # kaizen runs DVC in its own process, where this stage's stderr is not captured: the traceback goes to the
        # file it names too, and into the error that `dvc repro` raises there.
        if errors := os.environ.get(STAGE_ERRORS):
            with open(errors, "a", encoding="utf-8") as out:
                out.write(traceback.format_exc())
        raise
