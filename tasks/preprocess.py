"""preprocess: the DVC stage that turns accepted batches into per-batch splits and replay samples.

`dvc repro` runs `python -m kaizen.tasks.preprocess` in the workspace. Everything is a pure function of the
accepted batches and the `preprocess`/`replay` params, seeded per batch, so an earlier batch's splits never
change when a later batch arrives, and any data version can be rebuilt byte for byte.

Output, per batch: `data/prepared/<batch>/{train,val,test}.parquet`, and for every batch after the first a
`replay.parquet` drawn from the train splits of the batches before it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.settings import PreprocessSettings, ReplaySettings
from kaizen.tasks.text import normalize_text, text_key

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


def prepare(batches: dict[str, pd.DataFrame], pre: PreprocessSettings, replay: ReplaySettings,
            suspect: frozenset[str] = frozenset()) -> dict[str, dict[str, pd.DataFrame]]:
    """All batches (by id, in order) -> per batch its splits and, after the first, its replay sample, drawn from
    the earlier batches whose labels are trusted (a `suspect` batch never enters replay)."""
    prepared: dict[str, dict[str, pd.DataFrame]] = {}
    seen: set[str] = set()
    for batch_id in sorted(batches):
        frame = batches[batch_id][["text", "label"]].copy()
        frame["text"] = frame["text"].map(lambda t: normalize_text(t, pre.lowercase))
        keys = frame["text"].map(text_key)
        frame = frame[~keys.isin(seen) & ~keys.duplicated()].reset_index(drop=True)
        seen.update(keys)
        splits = split_batch(frame, pre, batch_seed(pre.seed, batch_id))
        pool = {earlier: parts["train"] for earlier, parts in prepared.items() if earlier not in suspect}
        n_replay = min(replay.max_rows, int(round(replay.ratio * len(splits["train"]))))
        if pool:
            splits["replay"] = draw_replay(pool, n_replay, batch_seed(pre.seed, f"replay:{batch_id}"))
        prepared[batch_id] = splits
    return prepared


def write_prepared(prepared: dict[str, dict[str, pd.DataFrame]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for batch_id, splits in prepared.items():
        (out_dir / batch_id).mkdir(exist_ok=True)
        for name, frame in splits.items():
            frame.to_parquet(out_dir / batch_id / f"{name}.parquet", index=False)
        summary[batch_id] = {name: len(frame) for name, frame in splits.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def read_suspect(trust_file: Path) -> frozenset[str]:
    """The batches whose labels are suspect, as the loop recorded them for this stage (none before any)."""
    if not trust_file.exists():
        return frozenset()
    return frozenset(json.loads(trust_file.read_text(encoding="utf-8"))["suspect"])


def main() -> None:
    """The DVC stage: run in the workspace, reads data/accepted, writes data/prepared."""
    import shutil

    from kaizen.tasks.workspace import Workspace

    ws = Workspace.open(Path.cwd())
    batches = {p.stem: pd.read_parquet(p) for p in sorted(ws.accepted_dir.glob("batch-*.parquet"))}
    prepared = prepare(batches, ws.settings.preprocess, ws.settings.replay, read_suspect(ws.trust_file))
    shutil.rmtree(ws.prepared_dir, ignore_errors=True)  # DVC owns this folder: rebuild it whole
    write_prepared(prepared, ws.prepared_dir)
    print(f"prepared {len(prepared)} batch(es) into {ws.prepared_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
