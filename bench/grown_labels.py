"""A label set that grows, measured (a script that prints tables, not a test): the demo's four domains, one batch
each (movies, Amazon, fine food, airline), through the real loop twice per seed on the same batches:

  two    data.labels stays [negative, positive]: the airline batch's `neutral` tweets are quarantined
  three  `demo.grow_labels` on: `neutral` joins data.labels before the airline batch, whose champion head is
         extended (its old classes' weights kept) and which is learned with three classes

Both final champions are scored on the same held-out rows (whole reviews the stream never carries): the earlier
domains' (two labels), and airline's with its neutral tweets. Reported per seed and as mean ± sd over seeds: the
accuracy on the old classes of every domain in each run, the paired difference three − two with its standard
error (the issue's bound: within 1 point on the earlier domains), and the neutral class's precision, recall and F1
in the three-label run.

    .venv/bin/python bench/grown_labels.py [--rows 800] [--held-out 1000] [--seeds 13,14,15] [--set KEY=VALUE ...]
    .venv/bin/python bench/grown_labels.py --table-only --seeds 13,14,15
    .venv/bin/python bench/grown_labels.py --three-only --work DIR   # a change to growing, against DIR's two-label runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import continual
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("movies", "amazon", "finefood", "airline")
OLD, NEW = continual.LABELS, "neutral"
RUNS = {"two": False, "three": True}  # the run's name -> demo.grow_labels


def final_predictions(ws, held: dict) -> dict[str, dict[str, list[str]]]:
    """The final champion's label for every held-out row, per domain (one model load): as served ("predicted", its
    likeliest label) and on the old classes alone ("old_classes", (the likeliest of negative and positive: how the gate judges a grown
    challenger on earlier batches, tasks/evaluation/grown.py)."""
    from kaizen.tasks.model.predict import model_labels, predict
    from kaizen.tasks.registry import tracking

    champion = tracking.model_by_alias(tracking.connect(ws), ws.settings.model.registered_name, tracking.CHAMPION)
    model = tracking.local_model(ws, champion.version)
    texts = [t for d in ORDER for t in held[d]["text"]]
    labels, probs = predict(model, texts, max_length=ws.settings.model.max_length,
                            batch_size=ws.settings.serving.batch_size)
    columns = model_labels(model)
    old = [columns.index(label) for label in OLD]
    restricted = np.asarray(OLD)[np.asarray(probs)[:, old].argmax(axis=1)]
    ends = np.cumsum([len(held[d]) for d in ORDER])[:-1]
    split = lambda values: {d: [str(x) for x in part]  # noqa: E731
                            for d, part in zip(ORDER, np.split(np.asarray(values), ends), strict=True)}
    return {"predicted": split(labels), "old_classes": split(restricted)}


def one_seed(work: Path, seed: int, rows: int, held_out: int, overrides: dict, runs: tuple[str, ...] = tuple(RUNS),
             earlier: dict | None = None) -> dict:
    """Both runs of a seed, or those of `runs` with the others taken from `earlier` (that seed's result.json)."""
    # the rows of bench/continual.py's stream for this seed; the held-out rows with airline's neutral tweets
    files, held = continual.write_stream(work, list(ORDER), seed, rows, held_out, labels=(*OLD, NEW))
    none = [[] for _ in ORDER]  # no held-out scoring inside the arm: only the final champions are compared
    out: dict = {"truth": {d: held[d]["label"].tolist() for d in ORDER}}
    if earlier is not None:
        same_rows(work, out["truth"], earlier)
        out |= {run: earlier[run] for run in RUNS if run not in runs}
    for run, grow in ((r, RUNS[r]) for r in runs):
        arm = continual.kaizen_arm(work / run, files, seed, overrides | {"demo.grow_labels": grow},
                                   {d: held[d] for d in ORDER}, none)
        normalised = arm["held_out_eval"].sets  # the held-out texts as the stage normalises them
        out[run] = final_predictions(arm["ws"], normalised) | {
            "decisions": arm["decisions"], "samples": arm["samples"], "labels": list(arm["ws"].settings.data.labels)}
        shutil.rmtree(arm["ws"].runs_dir, ignore_errors=True)  # checkpoints and merge candidates, not read again
        print(f"  {run} labels: decisions {arm['decisions']}", flush=True)
    return out


def rescored(work: Path, seed: int, rows: int, held_out: int) -> dict:
    """A seed's result.json with its final champions' answers computed again (the same held-out rows)."""
    from kaizen.tasks.workspace.layout import Workspace

    result = json.loads((work / "result.json").read_text())
    _, held = continual.write_stream(work, list(ORDER), seed, rows, held_out, labels=(*OLD, NEW))
    same_rows(work, {d: held[d]["label"].tolist() for d in ORDER}, result)
    for run in RUNS:
        ws = Workspace.open(work / run)
        result[run] |= final_predictions(ws, continual.HeldOut(ws, held).sets)
    return result


def same_rows(work: Path, truth: dict, result: dict) -> None:
    """Refuse a result.json made on other held-out rows: pairing with it would mean nothing."""
    if result["truth"] != truth:
        raise SystemExit(f"{work}: its result.json holds other held-out rows (other --rows or --held-out?)")


def old_class_hits(run: dict, truth: dict, domain: str, answers: str = "predicted") -> np.ndarray:
    """Which held-out rows of the old classes the run's final champion labels right, with its `answers`: as served
    ("predicted") or the likeliest old class ("old_classes")."""
    t, p = np.asarray(truth[domain]), np.asarray(run.get(answers, run["predicted"])[domain])  # 2 labels: the same
    return (p == t)[np.isin(t, OLD)].astype(float)


def class_scores(truth: list[str], predicted: list[str], label: str) -> tuple[float, float, float]:
    t, p = np.asarray(truth) == label, np.asarray(predicted) == label
    precision = (t & p).sum() / max(p.sum(), 1)
    recall = (t & p).sum() / max(t.sum(), 1)
    return float(precision), float(recall), float(2 * precision * recall / max(precision + recall, 1e-12))


def tables(runs: list[dict], seeds: list[int]) -> str:
    cell = lambda v: f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}"  # noqa: E731
    lines: list[str] = []
    for answers, title in (("predicted", "as served (the likeliest of all the champion's labels)"),
                           ("old_classes", "the likeliest old class (as the gate judges earlier batches)")):
        lines += [f"Old classes (negative, positive), held-out accuracy of the final champion, {title}, mean ± sd "
                  "over seeds:", "", "| run | " + " | ".join(ORDER) + " | earlier three, mean |",
                  "|---|" + "---|" * (len(ORDER) + 1)]
        for name in RUNS:
            acc = [[old_class_hits(r[name], r["truth"], d, answers).mean() for d in ORDER] for r in runs]
            lines.append(f"| {name} labels | " + " | ".join(cell([a[i] for a in acc]) for i in range(len(ORDER)))
                         + f" | {cell([np.mean(a[:3]) for a in acc])} |")
        lines += ["", "three − two, paired on the same held-out rows, points (± standard error):", ""]
        for seed, r in zip(seeds, runs, strict=True):
            diffs = {d: old_class_hits(r["three"], r["truth"], d, answers) - old_class_hits(r["two"], r["truth"], d)
                     for d in ORDER}
            earlier = [diffs[d] for d in ORDER[:3]]
            mean = 100 * np.mean([d.mean() for d in earlier])
            se = 100 * np.sqrt(sum(d.var(ddof=1) / len(d) for d in earlier)) / len(earlier)
            lines.append(f"- seed {seed}: " + ", ".join(
                f"{d} {100 * v.mean():+.1f} ± {100 * v.std(ddof=1) / np.sqrt(len(v)):.1f}" for d, v in diffs.items())
                + f"; earlier three {mean:+.1f} ± {se:.1f}")
        lines.append("")
    answered_new = [np.mean([p == NEW for d in ORDER[:3] for p in r["three"]["predicted"][d]]) for r in runs]
    lines += [f"Rows of the earlier three domains (no `{NEW}` among them) that the three-label champion answered "
              f"`{NEW}`: {cell(answered_new)} (each one counts as wrong above)"]
    scores = [class_scores(r["truth"]["airline"], r["three"]["predicted"]["airline"], NEW) for r in runs]
    n_new = [int(np.sum(np.asarray(r["truth"]["airline"]) == NEW)) for r in runs]
    lines += ["", f"`{NEW}` in the three-label run (airline held out, {n_new} {NEW} rows per seed): precision "
              f"{cell([s[0] for s in scores])}, recall {cell([s[1] for s in scores])}, F1 {cell([s[2] for s in scores])}",
              "", "Decisions per seed (two | three): " + "; ".join(
                  f"{seed}: {' '.join(r['two']['decisions'])} | {' '.join(r['three']['decisions'])}"
                  for seed, r in zip(seeds, runs, strict=True)),
              "Training samples per seed (two | three): " + "; ".join(
                  f"{seed}: {r['two']['samples']} | {r['three']['samples']}" for seed, r in zip(seeds, runs, strict=True))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800, help="rows per domain")
    parser.add_argument("--held-out", type=int, default=1000, help="held-out rows per domain, at most")
    parser.add_argument("--seeds", default="13,14,15")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override of both runs (YAML value)")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the tables of --work's results")
    parser.add_argument("--rescore", action="store_true",
                        help="run no loop: the final champions of --work's runs answer the held-out rows again")
    parser.add_argument("--three-only", action="store_true",
                        help="run the three-label run alone, the two-label run taken from --work's result.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "grown_labels")
    args = parser.parse_args()
    continual.prepare_environment(args.work)
    overrides = {"data.min_batch_rows": 1, "data.settle_seconds": 0} | continual.parse_sets(args.set)
    seeds, began, runs = [int(s) for s in args.seeds.split(",")], time.perf_counter(), []
    for seed in seeds:
        work = args.work / f"seed{seed}"
        if args.rescore:
            (work / "result.json").write_text(json.dumps(rescored(work, seed, args.rows, args.held_out)))
        elif not args.table_only:
            earlier = json.loads((work / "result.json").read_text()) if args.three_only else None
            for run in ("three",) if args.three_only else RUNS:
                shutil.rmtree(work / run, ignore_errors=True)
            print(f"seed {seed}", flush=True)
            result = one_seed(work, seed, args.rows, args.held_out, overrides,
                              ("three",) if args.three_only else tuple(RUNS), earlier)
            (work / "result.json").write_text(json.dumps(result))
        runs.append(json.loads((work / "result.json").read_text()))
    text = (f"{args.rows} rows per domain, held out up to {args.held_out} per domain; overrides "
            f"{continual.parse_sets(args.set) or 'none'}; seeds {args.seeds}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"{time.perf_counter() - began:.0f} s in all\n\n" + tables(runs, seeds))
    (args.work / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
