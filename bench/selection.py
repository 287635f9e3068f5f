"""Does choosing what to label pay? The same label budget per batch spent at random or by kaizen's selection, on
the real stream (a script that prints tables, not a test).

Protocol, per seed:
- The domains in the demo's order: movies, amazon, finefood, airline. Each gives `--rows` rows of traffic (whole
  reviews, stream.sample_groups; only positive/negative labels and texts the loop accepts, one per text) and up to
  `--held-out` held-out rows that no traffic carries (continual.held_out_rows: no streamed text, no sentence of
  a streamed Amazon review).
- A champion is bootstrapped on the movies traffic, all of it labeled, as the loop bootstraps: the DVC stage's
  split (preprocess.split_one), its train split, train.bootstrap_epochs, balanced class weights.
- Every later domain's traffic arrives unlabeled. In each arm the arm's own champion answers every row (class
  probabilities as tasks/serving/capture.py records them) and the arm buys `--budget` B labels:
    random     B rows at random
    select     kaizen's selection (tasks/serving/selection.py, called, not copied): `doubt` on the captured
               probabilities, the select.pool_factor x B most uncertain rows, then B of them by `choose` on the
               champion's `embeddings` (select.method: `typical`, the most central text of each of B
               uncertainty-weighted clusters, or `farthest`, k-center from a sample of select.reference_rows rows
               the arm's champion learned from; `--set select.method=farthest` runs the older one)
    random-2x  2B rows at random (the same draw as random's, extended): "the accuracy of random with half its
               labels" is select against this arm
    mixed      with --random-share S only: round(S x B) rows of random's draw (its first), and the rest by kaizen's
               selection among the other rows (the bulk of the traffic keeps a voice however the doubts lean)
  The arm fine-tunes its champion (tasks/training/train.fine_tune, params.yaml's train settings) on its labeled
  rows plus a replay sample of the rows it learned from before (replay.ratio per new row, an equal share per
  domain, preprocess.draw_replay), and carries the model on. Not the loop's: no WiSE-FT merge and no validation
  split (with 100 labels every one trains), no gate (every step is kept).
- After each step every arm's model is scored on the held-out rows of the domains seen so far. Paired
  differences (select - random, select - random-2x) are taken on the same rows, per seed, with standard errors
  (continual.paired); over seeds, their mean with two errors: from the rows (combined) and between the seeds.

    .venv/bin/python bench/selection.py [--seeds 13,14,15] [--budget 100] [--rows 800] [--held-out 1000] [--set K=V]
                                        [--random-share S]
    .venv/bin/python bench/selection.py --tiny --seeds 1 --rows 200 --budget 20    # a smoke run (minutes)
    .venv/bin/python bench/selection.py --table-only --seeds 13,14,15              # the tables of a run again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import continual  # bench/continual.py: held-out rows and scoring, fine-tunes, paired differences
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("movies", "amazon", "finefood", "airline")
ARMS = ("random", "select", "random-2x")
NO_VALIDATION = pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)})


@dataclass
class Arm:
    name: str
    model: Path
    learned: dict[str, pd.DataFrame]  # per domain, the labeled rows trained on: the replay pool, select's centres
    labels: list[int] = field(default_factory=list)  # labels bought at each step
    positive: list[float] = field(default_factory=list)  # the share of them labeled positive


def settings_of(root: Path, seed: int, overrides: dict):
    """A folder holding the template's params.yaml with this run's overrides, opened as a Workspace for its
    settings (nothing else of a workspace is made: no loop runs here)."""
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import write_overrides

    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template("params.yaml"), root / "params.yaml")
    write_overrides(root / "params.yaml", {"preprocess.seed": seed, "train.seed": seed, **overrides})
    return Workspace.open(root)


def domains(ws, rows: int, held_out: int, seed: int) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """Per domain, its traffic (texts normalised as the DVC stage does) and its held-out rows."""
    from kaizen.tasks.data import stream
    from kaizen.tasks.formats.text import normalize_text, text_key

    sources = ROOT / ".kaizen" / "sources"
    stream.fetch_sources(sources)
    traffic, held, lowercase = {}, {}, ws.settings.preprocess.lowercase
    for name in ORDER:
        rows_of = stream.load_domain(name, sources)
        keep = rows_of["label"].isin(continual.LABELS) & (rows_of["text"].str.len() <= ws.settings.data.max_text_chars)
        usable = rows_of[keep & ~rows_of["text"].map(text_key).duplicated()]
        sample = stream.sample_groups(usable, rows, seed)
        held[name] = continual.held_out_rows(usable, sample, held_out, seed)
        traffic[name] = sample.assign(text=sample["text"].map(lambda t: normalize_text(t, lowercase)))[
            ["text", "label"]].reset_index(drop=True)
    return traffic, held


def bootstrap(ws, movies: pd.DataFrame, out: Path) -> tuple[Path, pd.DataFrame]:
    """The first champion, trained as the loop trains it on a first batch; and the rows it learned from."""
    from kaizen.tasks.data.preprocess import split_one
    from kaizen.tasks.training.train import resolve_backbone

    splits = split_one(movies, ORDER[0], ws.settings.preprocess)
    model = continual.train_on(ws, Path(resolve_backbone(ws.settings.model.backbone)), splits["train"],
                               splits["val"], ws.settings.train.bootstrap_epochs, out, from_scratch=True)
    shutil.rmtree(out / "checkpoints")
    return model, splits["train"][["text", "label"]]


def captured_probabilities(tokenizer, net, texts: list[str], ws) -> list[list[float]]:
    """The champion's answers to `texts` through the served path (predict.classify), as capture.record keeps them."""
    from kaizen.tasks.model.predict import classify
    from kaizen.tasks.serving.capture import record

    answers = classify(tokenizer, net, texts, max_length=ws.settings.model.max_length,
                       lowercase=ws.settings.preprocess.lowercase, batch_size=ws.settings.serving.batch_size)
    now = datetime.now(UTC)
    captured = [record(text, answer, now, "score", "bench", True) for text, answer in
                zip(texts, answers.to_dict("records"), strict=True)]
    unanswered = [c["reason"] for c in captured if c["probabilities"] is None]
    if unanswered:  # select_for_labeling leaves such captures out; the traffic here should hold none
        raise ValueError(f"{len(unanswered)} texts of the traffic got no answer, e.g.: {unanswered[0]}")
    return [c["probabilities"] for c in captured]


def selected(arm: Arm, traffic: pd.DataFrame, budget: int, ws) -> np.ndarray:
    """The rows of `traffic` kaizen's selection gives `budget` labels to, as select_for_labeling chooses among
    captures (the pool of the most uncertain first, then select.method on the champion's embeddings)."""
    from kaizen.tasks.model.predict import load
    from kaizen.tasks.serving.picking import Deadline, choose
    from kaizen.tasks.serving.selection import doubt, doubtful_pool, embeddings, group_quotas

    settings = ws.settings.select
    tokenizer, net = load(arm.model, ws.settings.train.device)
    probabilities = captured_probabilities(tokenizer, net, traffic["text"].tolist(), ws)
    _, _, uncertainty = doubt(probabilities, settings.uncertainty)
    answered = traffic.assign(uncertainty=uncertainty, prediction=np.argmax(np.asarray(probabilities), axis=1))
    pool = doubtful_pool(answered, budget, settings.pool_factor, settings.by_prediction)
    deadline = Deadline(time.monotonic() + settings.max_seconds, settings.max_seconds)
    points = embeddings(tokenizer, net, pool["text"].tolist(), ws, deadline)  # normalised already
    # selection.training_sample reads the registry's lineage; here the arm knows what its champion learned from
    learned = pd.concat(arm.learned.values(), ignore_index=True)
    reference = learned.sample(n=min(settings.reference_rows, len(learned)),
                               random_state=ws.settings.preprocess.seed)["text"].tolist()
    centres = embeddings(tokenizer, net, reference, ws, deadline) if reference else None
    picks = choose(points, pool["uncertainty"].to_numpy(), centres, budget, settings.method,
                   ws.settings.preprocess.seed, deadline, groups=group_quotas(pool))
    return pool.index.to_numpy()[picks.order]


def learn(arm: Arm, domain: str, labeled: pd.DataFrame, ws, out: Path) -> None:
    """Fine-tune the arm's champion on `labeled` plus its replay sample; the new model replaces the old."""
    from kaizen.tasks.data.preprocess import batch_seed, draw_replay

    replay = ws.settings.replay
    n_replay = min(replay.max_rows, int(round(replay.ratio * len(labeled))))
    sample = draw_replay(arm.learned, n_replay, batch_seed(ws.settings.preprocess.seed, f"replay:{domain}"))
    train = pd.concat([labeled[["text", "label"]], sample[["text", "label"]]], ignore_index=True)
    model = continual.train_on(ws, arm.model, train, NO_VALIDATION, ws.settings.train.epochs, out / domain)
    shutil.rmtree(out / domain / "checkpoints")  # optimizer state: 3x the model, read by nothing here
    continual.discard(arm.model, out)  # the bootstrap champion is shared and lies outside `out`
    arm.model, arm.learned[domain] = model, labeled[["text", "label"]]
    arm.labels.append(len(labeled))
    arm.positive.append(float((labeled["label"] == "positive").mean()))


def arms_of(random_share: float) -> tuple[str, ...]:
    """The arms of a run: `mixed` too with --random-share."""
    return (*ARMS, "mixed") if random_share > 0 else ARMS


def mixed(arm: Arm, rows: pd.DataFrame, drawn: np.ndarray, budget: int, share: float, ws) -> np.ndarray:
    """round(share x budget) rows of the random draw, the rest by kaizen's selection among the others."""
    at_random = drawn[: int(round(share * budget))]
    others = np.setdiff1d(np.arange(len(rows)), at_random)
    chosen = selected(arm, rows.iloc[others].reset_index(drop=True), budget - len(at_random), ws)
    return np.concatenate([at_random, others[chosen]])


def one_run(work: Path, seed: int, args, overrides: dict) -> dict:
    ws = settings_of(work / "settings", seed, overrides)
    traffic, held = domains(ws, args.rows, args.held_out, seed)
    scored = continual.HeldOut(ws, held)
    began = time.perf_counter()
    champion, learned = bootstrap(ws, traffic[ORDER[0]], work / "bootstrap")
    first = scored.step(champion, [ORDER[0]])
    names = arms_of(args.random_share)
    steps = [dict.fromkeys(names, [first[ORDER[0]].astype(int).tolist()])]
    print(f"  bootstrap on {ORDER[0]}: {time.perf_counter() - began:.0f} s", flush=True)
    arms = {name: Arm(name, champion, {ORDER[0]: learned}) for name in names}
    for k, domain in enumerate(ORDER[1:], start=1):
        rows = traffic[domain]
        drawn = np.random.default_rng([seed, k]).permutation(len(rows))
        picks = {"random": drawn[: args.budget], "random-2x": drawn[: 2 * args.budget],
                 "select": selected(arms["select"], rows, args.budget, ws)}
        if "mixed" in arms:
            picks["mixed"] = mixed(arms["mixed"], rows, drawn, args.budget, args.random_share, ws)
        step = {}
        for name, arm in arms.items():
            learn(arm, domain, rows.iloc[picks[name]], ws, work / name)
            hits = scored.step(arm.model, list(ORDER[: k + 1]))
            step[name] = [hits[d].astype(int).tolist() for d in ORDER[: k + 1]]
        steps.append(step)
        print(f"  {domain}: {time.perf_counter() - began:.0f} s", flush=True)
    return {"domains": list(ORDER), "steps": steps, "labels": {name: arm.labels for name, arm in arms.items()},
            "positive": {name: arm.positive for name, arm in arms.items()},
            "held_out_rows": {d: len(h) for d, h in held.items()}, "seconds": time.perf_counter() - began}


def accuracy(hits: list[list[int]], new_only: bool) -> float:
    return float(np.mean(hits[-1]) if new_only else np.mean([np.mean(h) for h in hits]))


def accuracy_table(runs: list[dict], new_only: bool) -> str:
    """Per step and arm: labels bought so far, and accuracy (mean ± sd over seeds) on the domains seen so far
    (their mean) or on the new domain alone."""
    lines = ["| after | arm | labels | positive share of this step's labels | accuracy |", "|---|---|---|---|---|"]
    for k, domain in enumerate(ORDER[1:], start=1):
        for arm in runs[0]["steps"][k]:
            values = [accuracy(r["steps"][k][arm], new_only) for r in runs]
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            shares = [r["positive"][arm][k - 1] for r in runs if "positive" in r]  # not in the first run's files
            lines.append(f"| {domain} | {arm} | {int(np.mean([sum(r['labels'][arm][:k]) for r in runs]))} | "
                         f"{f'{np.mean(shares):.2f}' if shares else '—'} | {np.mean(values):.3f} ± {sd:.3f} |")
    return "\n".join(lines)


def differences(runs: list[dict], arm: str, against: str, new_only: bool) -> str:
    """`arm` - `against` after each step, paired on held-out rows: per seed (± its standard error), then the mean
    over seeds ± the rows' combined error / ± the standard error between seeds."""
    lines = []
    for k, domain in enumerate(ORDER[1:], start=1):
        per_seed = []
        for r in runs:
            hits = {a: r["steps"][k][a][-1:] if new_only else r["steps"][k][a] for a in (arm, against)}
            per_seed.append(continual.paired({a: {"held_out": {"correct": h}} for a, h in hits.items()},
                                             arm, against))
        means = [d for d, _ in per_seed]
        rows_se = float(np.sqrt(np.sum([se**2 for _, se in per_seed])) / len(per_seed))
        seeds_se = float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")
        lines.append(f"| {domain} | " + ", ".join(f"{d:+.1f} ± {se:.1f}" for d, se in per_seed)
                     + f" | {np.mean(means):+.1f} ± {rows_se:.1f} / ± {seeds_se:.1f} |")
    return "\n".join(["| after | per seed (points ± se) | mean ± se rows / ± se seeds |", "|---|---|---|", *lines])


def tables(runs: list[dict]) -> str:
    parts = []
    for new_only, title in ((False, "the domains seen so far (their mean)"), (True, "the new domain alone")):
        parts += [f"### Held-out accuracy on {title}", accuracy_table(runs, new_only)]
        for arm in [a for a in ("select", "mixed") if a in runs[0]["steps"][1]]:
            for against in ("random", "random-2x"):
                parts += [f"{arm} − {against}, points, on {title}:", differences(runs, arm, against, new_only)]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="13,14,15")
    parser.add_argument("--budget", type=int, default=100, help="labels bought per batch (random-2x: twice this)")
    parser.add_argument("--rows", type=int, default=800, help="rows of traffic per domain")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out rows per domain, at most")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random BERT (a smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override (YAML value), e.g. select.method=farthest")
    parser.add_argument("--random-share", type=float, default=0.0,
                        help="also run the `mixed` arm: this share of the budget at random, the rest selected")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the tables of --work's result.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "selection")
    args = parser.parse_args()
    if 2 * args.budget > args.rows:
        parser.error(f"--budget {args.budget}: random-2x buys {2 * args.budget} labels, more than --rows {args.rows}")
    overrides = continual.parse_sets(args.set)
    if args.tiny and not args.table_only:
        from long_stream import TINY
        from scale import tiny_backbone

        (args.work / "tiny").mkdir(parents=True, exist_ok=True)
        overrides |= TINY | {"model.backbone": str(tiny_backbone(args.work / "tiny"))}
    began, runs = time.perf_counter(), []
    for seed in (int(s) for s in args.seeds.split(",")):
        work = args.work / f"seed{seed}"
        if not args.table_only:
            shutil.rmtree(work, ignore_errors=True)
            print(f"seed {seed}", flush=True)
            result = one_run(work, seed, args, overrides)
            (work / "result.json").write_text(json.dumps(result))
        runs.append(json.loads((work / "result.json").read_text()))
    header = (f"{' -> '.join(ORDER)}; {args.rows} rows of traffic per domain, budget {args.budget} labels a batch, "
              f"held out {runs[0]['held_out_rows']}; {'tiny BERT' if args.tiny else 'MiniLM'}; seeds {args.seeds}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"{sum(r['seconds'] for r in runs):.0f} s of runs ({time.perf_counter() - began:.0f} s now)"
              + (f"; {', '.join(args.set)}" if args.set else "")
              + (f"; mixed: {args.random_share:g} of the budget at random" if args.random_share else ""))
    text = header + "\n\n" + tables(runs)
    (args.work / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
