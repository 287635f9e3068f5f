"""Continual learning on the real stream, three ways, on this machine (a script that prints a table, not a test).

movie snippets -> Amazon product snippets -> Amazon fine food -> airline tweets, each arm on the same batches:
  naive   fine-tune the latest model on each new batch, no replay, promote always
  kaizen  the loop as configured in params.yaml (replay + gate, and distillation if switched on)
  joint   retrain from the pretrained encoder on all batches so far, at every arrival (the upper bound)
Printed: each arm's final model's accuracy on every batch's test split and their mean, the worst forgetting
(the largest drop of a batch's accuracy from its best after any step), and the training samples
(rows x epochs) and seconds each arm spent.

    .venv/bin/python bench/continual.py [--rows 800] [--work bench/results/continual] [--distill 0.5]
                                        [--set replay.ratio=1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml

from kaizen.tasks.settings import write_overrides

ROOT = Path(__file__).resolve().parent.parent
NAIVE = {"replay.ratio": 0.0, "gate.min_score": 0.0, "gate.min_improvement": -1.0, "gate.max_regression": 1.0,
         "train.distill_weight": 0.0, "train.skip_if_champion_above": 1.01}


def accuracy_on_tests(ws, model_dir: Path, batches: list[str]) -> dict[str, float]:
    from kaizen.tasks.predict import predict

    out = {}
    for batch in batches:
        test = pd.read_parquet(ws.split_file(batch, "test"))
        predicted, _ = predict(model_dir, test["text"].tolist(), max_length=ws.settings.model.max_length)
        out[batch] = float((pd.Series(predicted) == test["label"].reset_index(drop=True)).mean())
    return out


def worst_forgetting(per_step: list[dict[str, float]]) -> float:
    """Largest drop of any batch from its best accuracy at an earlier step to the last step."""
    last, drops = per_step[-1], [0.0]
    for batch, final in last.items():
        earlier = [step[batch] for step in per_step[:-1] if batch in step]
        if earlier:
            drops.append(max(earlier) - final)
    return max(drops)


def loop_arm(root: Path, stream: list[Path], overrides: dict) -> dict:
    """A workspace fed the stream through the real loop (the Prefect flow), one batch per iteration."""
    from kaizen.tasks import registry
    from kaizen.tasks.ledger import Ledger
    from kaizen.tasks.workspace import Workspace, configure_environment, init_workspace

    init_workspace(root)
    write_overrides(root / "params.yaml", overrides)
    ws = Workspace.open(root)
    configure_environment(ws)  # before Prefect is imported; later arms keep the first arm's Prefect home
    from kaizen.flows.loop import iteration

    landing = Path(ws.landing)
    landing.mkdir(parents=True, exist_ok=True)
    per_step, samples, seconds = [], 0, 0.0
    for path in stream:
        shutil.copy(path, landing / path.name)
        summary = iteration(str(root))
        client = registry.connect(ws)
        champion = registry.model_by_alias(client, ws.settings.model.registered_name, registry.CHAMPION)
        ledger = Ledger(ws.ledger_db)
        batches = [b.batch_id for b in ledger.batches()]
        ledger.close()
        per_step.append(accuracy_on_tests(ws, registry.local_model(ws, champion.version), batches))
        if summary.get("challenger_version"):
            metrics = client.get_run(summary["run_id"]).data.metrics
            epochs = ws.settings.train.bootstrap_epochs if len(per_step) == 1 else ws.settings.train.epochs
            samples += int(metrics["train.rows"]) * epochs
            seconds += metrics["train.seconds"]
        print(f"  {root.name}: {summary['batch']} {summary['decision']} champion v{summary['champion_version']}",
              flush=True)
    return {"final": per_step[-1], "forgetting": worst_forgetting(per_step), "samples": samples,
            "seconds": seconds, "ws": ws}


def joint_arm(ws, work: Path) -> dict:
    """Retrain from the pretrained encoder on the train splits of all batches so far, after every arrival."""
    from kaizen.tasks.ledger import Ledger
    from kaizen.tasks.train import fine_tune, resolve_backbone

    ledger = Ledger(ws.ledger_db)
    batches = [b.batch_id for b in ledger.batches()]
    ledger.close()
    settings = ws.settings
    per_step, samples, seconds = [], 0, 0.0
    for k in range(1, len(batches) + 1):
        seen = batches[:k]
        train = pd.concat([pd.read_parquet(ws.split_file(b, "train")) for b in seen], ignore_index=True)
        train = train.sample(frac=1.0, random_state=settings.train.seed)
        val = pd.concat([pd.read_parquet(ws.split_file(b, "val")) for b in seen], ignore_index=True)
        result = fine_tune(resolve_backbone(settings.model.backbone), train, val, settings.data.labels,
                           model=settings.model, train_settings=settings.train,
                           epochs=settings.train.bootstrap_epochs, out_dir=work / f"joint-{k}")
        samples += len(train) * settings.train.bootstrap_epochs
        seconds += result.seconds
        per_step.append(accuracy_on_tests(ws, result.model_dir, seen))
        print(f"  joint: retrained on {len(seen)} batch(es), {len(train)} rows", flush=True)
    return {"final": per_step[-1], "forgetting": worst_forgetting(per_step), "samples": samples,
            "seconds": seconds}


def table(arms: dict[str, dict], names: dict[str, str]) -> str:
    batches = list(next(iter(arms.values()))["final"])
    head = "| arm | " + " | ".join(names[b] for b in batches) + " | mean | worst forgetting | samples | seconds |"
    lines = [head, "|" + "---|" * (len(batches) + 5)]
    joint = arms["joint"]
    for arm, r in arms.items():
        mean = sum(r["final"].values()) / len(batches)
        share = f" ({100 * r['samples'] / joint['samples']:.0f}% of joint)" if arm != "joint" else ""
        lines.append(f"| {arm} | " + " | ".join(f"{r['final'][b]:.3f}" for b in batches)
                     + f" | {mean:.3f} | {r['forgetting']:.3f} | {r['samples']}{share} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800, help="rows per domain (0: all of them)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "continual")
    parser.add_argument("--set", action="append", default=[], help="override a kaizen param: section.key=value")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="also run kaizen with train.distill_weight set to this (a fourth arm)")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from kaizen.tasks import stream

    sources = ROOT / ".kaizen" / "sources"
    stream.fetch_sources(sources)
    files = stream.build_stream(sources, work / "stream", args.rows, seed=7)
    kaizen_overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}

    began = time.perf_counter()
    arms = {"naive": loop_arm(work / "naive", files, NAIVE)}
    arms["kaizen"] = loop_arm(work / "kaizen", files, kaizen_overrides)
    if args.distill:
        arms["kaizen+distill"] = loop_arm(work / "kaizen-distill", files,
                                          {**kaizen_overrides, "train.distill_weight": args.distill})
    arms["joint"] = joint_arm(arms["kaizen"]["ws"], work)
    names = {f"batch-{i + 1:04d}": name for i, name in enumerate(stream.DOMAINS)}
    result = table(arms, names)
    print(f"\nrows per domain: {args.rows}; kaizen overrides: {kaizen_overrides or 'none'}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - began:.0f} s in all\n")
    print(result)
    (work / "table.md").write_text(result + "\n")
    (work / "result.json").write_text(json.dumps({a: {k: v for k, v in r.items() if k != "ws"}
                                                  for a, r in arms.items()}, indent=2))


if __name__ == "__main__":
    main()
