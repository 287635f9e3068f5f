"""A long real stream: 20 batches of a few hundred rows, the four domains blended in drifting mixtures, run through
bench/continual.py's four arms over several seeds (a script that prints tables, not a test).

The stream (`long_stream`, pure and seeded): each batch is a blend of movies, Amazon, fine food and airline whose
weights drift gradually along ANCHORS (movies, then Amazon, then fine food lead; movies come back late, Amazon at
the end), its positive share falling linearly from 0.7 to 0.35, and one abrupt shift: batch `--shift` (default 12
of 20) is airline alone, a domain not seen before it. Rows are drawn as whole reviews, without replacement over
the whole stream (no text twice, across domains too), from rows whose label is positive or negative; up to
`--held-out` rows per domain, whole reviews as well, are set aside first and never streamed. `--flip N` swaps the
labels of batch N: the loop's label check should mark it suspect, so that it is never promoted nor replayed.

Arms (bench/continual.py's, on the same batches and splits and the same bootstrap champion): naive, fixed-gate,
kaizen (the real loop) and joint, retrained from the pretrained encoder on every batch so far (the flipped one
left out: the clean upper bound) at every `--joint-every`-th step and at the last; its samples are counted both as
run and as if it had retrained at every step. Every step's model is scored on the held-out rows of the domains
streamed so far.

    .venv/bin/python bench/long_stream.py [--batches 20] [--rows 300] [--held-out 1000] [--seeds 13,14,15]
                                          [--flip 8] [--shift 12] [--joint-every 5] [--set KEY=VALUE ...]
    .venv/bin/python bench/long_stream.py --tiny --batches 4 --rows 60 --seeds 1   # a smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import continual  # bench/continual.py: the arms, the held-out scoring and the tables
import long_stream_report as report
import numpy as np
import pandas as pd

from kaizen.tasks.formats.text import text_key
from kaizen.tasks.workspace.files import frame_bytes

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("movies", "amazon", "finefood", "airline")
# Mixture weights (movies, amazon, finefood, airline) at positions 0..1 of the stream; a batch between two anchors
# blends them linearly. Airline arrives only with the shift and stays after it.
ANCHORS: tuple[tuple[float, tuple[float, float, float, float]], ...] = (
    (0.00, (0.8, 0.2, 0.0, 0.0)),
    (0.30, (0.2, 0.5, 0.3, 0.0)),
    (0.55, (0.1, 0.2, 0.7, 0.0)),
    (0.60, (0.1, 0.1, 0.4, 0.4)),
    (0.80, (0.5, 0.0, 0.1, 0.4)),
    (1.00, (0.2, 0.4, 0.2, 0.2)),
)
POSITIVE_SHARE = (0.7, 0.35)  # of the first batch and of the last, linear in between
SHIFT_DOMAIN, SHIFT_AT = "airline", 0.6  # the abrupt shift: batch round(0.6 x batches) is this domain alone
# The tests' fast settings for the tiny random BERT, with the gate and the label check open (bench/scale.py's).
TINY = {"model.max_length": 32, "train.learning_rate": 5e-3, "train.epochs": 2, "train.bootstrap_epochs": 6,
        "train.batch_size": 8, "gate.min_score": 0.0, "gate.min_improvement": -1.0, "gate.max_regression": 1.0,
        "gate.improvement_alpha": 1.0, "gate.min_test_rows": 5, "trust.min_kappa": -1.0,
        "trust.max_confident_issues": 1.0, "drift.max_reference_rows": 400}


@dataclass(frozen=True)
class Stream:
    batches: list[pd.DataFrame]  # columns text, label, domain; in arrival order
    held_out: dict[str, pd.DataFrame]  # per domain: text, label; never streamed
    shift: int  # the batch (1-based) of one domain alone; 0: none
    flip: int  # the batch (1-based) whose labels are swapped; 0: none


def mixture(batches: int, shift: int) -> list[dict[str, float]]:
    """Each batch's domain weights: ANCHORS interpolated at its position, batch `shift` (1-based) SHIFT_DOMAIN alone."""
    positions = np.linspace(0.0, 1.0, batches) if batches > 1 else np.zeros(1)
    at = [a for a, _ in ANCHORS]
    weights = [{d: float(np.interp(t, at, [w[i] for _, w in ANCHORS])) for i, d in enumerate(DOMAINS)}
               for t in positions]
    if shift:
        weights[shift - 1] = {d: float(d == SHIFT_DOMAIN) for d in DOMAINS}
    return weights


def positive_shares(batches: int) -> list[float]:
    return [float(p) for p in np.linspace(*POSITIVE_SHARE, batches)]


class _Pool:
    """One domain's streamable reviews, in a seeded order, drawn whole and at most once."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows
        self.groups = [np.asarray(ix) for ix in rows.groupby("group", sort=False).indices.values()]
        positive = (rows["label"] == "positive").to_numpy()
        self.pos = np.array([positive[ix].sum() for ix in self.groups])
        self.neg = np.array([len(ix) for ix in self.groups]) - self.pos
        self.free = np.ones(len(self.groups), dtype=bool)
        self.longest = max((len(ix) for ix in self.groups), default=0)

    def take(self, n_pos: int, n_neg: int) -> pd.DataFrame:
        """The first free reviews, in order, that fit what is still wanted of each label; then, for rows still
        wanted, the next free reviews whatever their labels (an Amazon review mixes them), the last one cut to
        hit the row count as stream.sample_groups cuts it (its other rows are never streamed)."""
        taken = []
        for g in np.flatnonzero(self.free):
            if n_pos + n_neg == 0:
                break
            if self.pos[g] <= n_pos and self.neg[g] <= n_neg:
                taken.append(self.groups[g])
                n_pos, n_neg = n_pos - self.pos[g], n_neg - self.neg[g]
                self.free[g] = False
        rest = n_pos + n_neg
        for g in np.flatnonzero(self.free):
            if rest == 0:
                break
            taken.append(self.groups[g][:rest])
            rest -= len(taken[-1])
            self.free[g] = False
        return self.rows.iloc[np.concatenate(taken)] if taken else self.rows.iloc[:0]


def split_held_out(domain: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(held out, streamable): whole reviews in a seeded order, the first ones up to n rows held out."""
    groups = pd.unique(domain["group"])
    order = pd.Series(np.arange(len(groups)), index=groups[np.random.default_rng(seed).permutation(len(groups))])
    shuffled = domain.assign(_rank=domain["group"].map(order)).sort_values("_rank", kind="stable")
    sizes = shuffled.groupby("_rank", sort=True).size()
    held_ranks = set(sizes.index[sizes.cumsum() <= n])
    held = shuffled["_rank"].isin(held_ranks)
    return shuffled[held].drop(columns="_rank"), shuffled[~held].drop(columns="_rank")


def long_stream(domains: dict[str, pd.DataFrame], batches: int = 20, rows: int = 300, seed: int = 13,
                held_out: int = 1000, shift: int | None = None, flip: int = 0, max_chars: int = 5000) -> Stream:
    """The drifting stream of `batches` batches of about `rows` rows from `domains` (stream.load_domain's frames:
    text, label, group), and the held-out rows of each domain. Rows the loop would refuse (a label outside
    positive/negative, a text over `max_chars`, a text seen before) never enter it."""
    shift = round(SHIFT_AT * batches) if shift is None else shift
    for name, value in (("shift", shift), ("flip", flip)):
        if not 0 <= value <= batches:
            raise ValueError(f"{name} must be a batch between 1 and {batches} (0: none), got {value}")
    seen: set[str] = set()
    pools, held = {}, {}
    for i, name in enumerate(DOMAINS):
        frame = domains[name]
        keys = frame["text"].map(text_key)
        keep = frame["label"].isin(continual.LABELS) & (frame["text"].str.len() <= max_chars)
        keep &= ~keys.isin(seen) & ~keys.duplicated()
        seen |= set(keys[keep])
        held[name], rest = split_held_out(frame[keep], held_out, seed + i)
        pools[name] = _Pool(rest)
    out = []
    for k, (weights, share) in enumerate(zip(mixture(batches, shift), positive_shares(batches), strict=True)):
        out.append(_draw(pools, weights, share, rows, k + 1, np.random.default_rng([seed, k])))
    if flip:
        flipped = out[flip - 1]
        out[flip - 1] = flipped.assign(label=flipped["label"].map({"positive": "negative", "negative": "positive"}))
    return Stream(out, {d: h[["text", "label"]].reset_index(drop=True) for d, h in held.items()}, shift, flip)


def _draw(pools: dict[str, _Pool], weights: dict[str, float], share: float, rows: int, batch: int,
          rng: np.random.Generator) -> pd.DataFrame:
    """One batch: `rows` split over the domains by weight, `share` of them positive, shuffled. Domains whose
    reviews are longest are drawn first: the whole reviews miss their label counts most, and the domains drawn
    after them make up the batch's positive share."""
    from kaizen.tasks.data.preprocess import apportion

    quotas = dict(zip(DOMAINS, apportion(rows, [weights[d] for d in DOMAINS], [rows] * len(DOMAINS)), strict=True))
    positives, left, parts = round(rows * share), rows, []
    for name in sorted(DOMAINS, key=lambda d: -pools[d].longest):
        quota = quotas[name]
        n_pos = min(quota, max(0, round(positives * quota / left))) if left else 0
        part = pools[name].take(n_pos, quota - n_pos)
        if len(part) < quota:  # the schedule would silently change
            raise ValueError(f"batch {batch}: {name} has {len(part)} rows left for its {quota}: lower --rows, "
                             "--batches or --held-out")
        parts.append(part.assign(domain=name))
        positives, left = positives - int((part["label"] == "positive").sum()), left - quota
    batch_rows = pd.concat(parts, ignore_index=True)
    return batch_rows.iloc[rng.permutation(len(batch_rows))][["text", "label", "domain"]].reset_index(drop=True)


def composition(s: Stream) -> list[dict]:
    """What each batch holds: rows per domain and the positive share."""
    return [{"batch": k, "rows": len(b), "positive": round(float((b["label"] == "positive").mean()), 3),
             "domains": {d: int((b["domain"] == d).sum()) for d in DOMAINS},
             "note": "shift" if k == s.shift else "flipped labels" if k == s.flip else ""}
            for k, b in enumerate(s.batches, start=1)]


def step_notes(s: Stream):
    """An `after_step` for continual.kaizen_arm: the checks that stopped the step, its first reason, and how many
    rows of the flipped batch its replay sample held (the DVC replay stage's output, drawn for that step). Then
    the step's scratch folder goes: checkpoints and merge candidates, about 500 MB a step with MiniLM, which the
    loop keeps and nothing here reads again (the champion is scored from the registry's copy)."""
    flipped = set(s.batches[s.flip - 1]["text"].map(text_key)) if s.flip else set()

    def after_step(ws, summary: dict) -> dict:
        replay = ws.replay_dir / "replay.parquet"
        texts = pd.read_parquet(replay, columns=["text"])["text"] if replay.exists() else pd.Series([], dtype=str)
        if (ws.runs_dir / summary["batch"]).exists():  # absent when nothing was trained
            shutil.rmtree(ws.runs_dir / summary["batch"])
        return {"fired": report.fired_checks(summary["decision"], summary["reasons"]),
                "reason": (summary["reasons"] or [""])[0][:300],
                "flipped_replayed": int(texts.map(text_key).isin(flipped).sum())}
    return after_step


def joint_every(ws, batches: list[str], every: int, leave_out: set[str], work: Path, held_out, scored_on) -> dict:
    """Joint retraining at every `every`-th step and at the last, each from the pretrained encoder on the batches
    so far but `leave_out`; a model no later step needs is deleted once scored."""
    at = sorted({*range(every, len(batches) + 1, every), len(batches)})
    steps, held = [], []
    for k in at:
        model = continual.joint_model(ws, [b for b in batches[:k] if b not in leave_out], work / f"joint-{k:02d}")
        steps.append(continual.accuracies(model, ws, batches[:k]))
        held.append(held_out.step(model, scored_on[k - 1]))
        print(f"    joint: retrained at step {k}", flush=True)
        if k != at[-1]:
            continual.discard(model, work)
    return {"steps": steps, "held_out": held, "decisions": [], "at": at,
            "samples": continual.joint_samples(ws, batches, at, leave_out)}


def one_run(work: Path, seed: int, args, overrides: dict) -> dict:
    from kaizen.tasks.data import stream as real
    from kaizen.tasks.workspace.settings import load_settings

    sources = ROOT / ".kaizen" / "sources"
    real.fetch_sources(sources)
    s = long_stream({d: real.load_domain(d, sources) for d in DOMAINS}, args.batches, args.rows, seed, args.held_out,
                    args.shift, args.flip, load_settings(ROOT / "params.yaml").data.max_text_chars)
    (work / "stream").mkdir(parents=True, exist_ok=True)
    files = []
    for k, b in enumerate(s.batches, start=1):
        files.append(work / "stream" / f"{k:02d}.csv")
        files[-1].write_bytes(frame_bytes(b[["text", "label"]], files[-1].name))
    order = list(dict.fromkeys(d for b in s.batches for d in DOMAINS if (b["domain"] == d).any()))
    scored_on = [[d for d in order if any((b["domain"] == d).any() for b in s.batches[: k + 1])]
                 for k in range(len(s.batches))]  # each step: the domains streamed so far
    kaizen = continual.kaizen_arm(work / "kaizen", files, seed, overrides, s.held_out, scored_on, step_notes(s))
    ws, batches, scored = kaizen["ws"], kaizen["batches"], kaizen["held_out_eval"]
    leave_out = {batches[s.flip - 1]} if s.flip else set()
    boot = kaizen["bootstrap"]
    arms = {"naive": continual.sequential_arm(ws, batches, boot, work / "naive", 0.0, False, scored, scored_on),
            "fixed-gate": continual.sequential_arm(ws, batches, boot, work / "fixed", 0.5, True, scored, scored_on),
            "kaizen": kaizen,
            "joint": joint_every(ws, batches, args.joint_every, leave_out, work, scored, scored_on)}
    every_step = continual.joint_samples(ws, batches, leave_out=leave_out)
    result = {name: continual.summarise(arm, batches, order) | {
        "share": arm["samples"] / every_step, "share_run": arm["samples"] / arms["joint"]["samples"],
        "curve": report.curve(arm, arms["joint"]["at"])} for name, arm in arms.items()}
    result["kaizen"]["per_step"] = report.per_step(kaizen, batches)
    return result | {"domains": order, "stream": composition(s), "flip": s.flip, "shift": s.shift,
                     "joint_at": arms["joint"]["at"], "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rows", type=int, default=300, help="rows per batch")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out rows per domain, at most")
    parser.add_argument("--seeds", default="13,14,15")
    parser.add_argument("--shift", type=int, default=None, help="the batch of airline alone (default 0.6 x batches)")
    parser.add_argument("--flip", type=int, default=0, help="the batch whose labels are swapped (0: none)")
    parser.add_argument("--joint-every", type=int, default=5, help="joint retrains at every k-th step and the last")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random BERT, gate and label check open")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override of the kaizen arm (YAML value)")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the tables of --work's result.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "long_stream")
    args = parser.parse_args()
    continual.prepare_environment(args.work)
    # One landed file is one batch (min_batch_rows 1), read at once (settle 0: the bench writes it whole).
    overrides: dict = {"data.min_batch_rows": 1, "data.settle_seconds": 0}
    if args.tiny:
        from scale import tiny_backbone

        (args.work / "tiny").mkdir(parents=True, exist_ok=True)
        overrides |= TINY | {"model.backbone": str(tiny_backbone(args.work / "tiny"))}
    overrides |= continual.parse_sets(args.set)
    began, runs = time.perf_counter(), []
    for seed in (int(s) for s in args.seeds.split(",")):
        work = args.work / f"seed{seed}"
        if not args.table_only:
            shutil.rmtree(work, ignore_errors=True)
            print(f"seed {seed}", flush=True)
            (work / "result.json").parent.mkdir(parents=True, exist_ok=True)
            (work / "result.json").write_text(json.dumps(one_run(work, seed, args, overrides), indent=1))
        runs.append(json.loads((work / "result.json").read_text()))
    header = (f"{args.batches} batches of {args.rows} rows, held out up to {args.held_out} per domain, flip "
              f"{args.flip or 'none'}, joint every {args.joint_every}; {'tiny BERT' if args.tiny else 'MiniLM'}; "
              f"overrides {continual.parse_sets(args.set) or 'none'}; seeds {args.seeds}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"{time.perf_counter() - began:.0f} s in all")
    text = header + "\n\n" + report.tables(runs, args.seeds)
    (args.work / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
