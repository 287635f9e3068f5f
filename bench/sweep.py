"""How the training knobs of a continued fine-tune trade learning against forgetting, on the real stream with the
real MiniLM (a script that prints a table, not a test; it chose the defaults in params.yaml).

The loop's training side only, without Prefect, MLflow or the gate, so that many variants fit in an hour: the
four domains are split as the DVC stage splits them, one bootstrap champion is trained per seed, and each
variant then fine-tunes it on each later batch (plus its replay sample), merges the result with the champion
(WiSE-FT, the coefficient chosen on validation splits) and carries the merged model on. Printed per variant:
test accuracy on every domain after the last batch, their mean, the worst drop of a domain from its best after
any step, and the training samples (rows x epochs).

    .venv/bin/python bench/sweep.py [--rows 800] [--seeds 13] [--variants base,merge,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.data import stream
from kaizen.tasks.data.preprocess import draw_replay, prepare
from kaizen.tasks.model.predict import predict
from kaizen.tasks.training.merge import choose_merge
from kaizen.tasks.training.train import balanced_weights, fine_tune, resolve_backbone
from kaizen.tasks.workspace.members import template
from kaizen.tasks.workspace.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("negative", "positive")
SHIPPED = (0.5, 0.75, 1.0)  # params.yaml's train.merge_alphas
# name -> (learning rate, replay ratio, epochs, merge coefficients (() = no merge), distillation weight)
VARIANTS = {
    "base": (5e-5, 0.5, 1, (), 0.0),
    "merge": (5e-5, 0.5, 1, (0.25, 0.5, 0.75, 1.0), 0.0),
    "merge+replay1": (5e-5, 1.0, 1, (0.25, 0.5, 0.75, 1.0), 0.0),
    "merge+replay1+lr2e-5": (2e-5, 1.0, 1, (0.25, 0.5, 0.75, 1.0), 0.0),
    "merge+replay1+2ep": (5e-5, 1.0, 2, (0.25, 0.5, 0.75, 1.0), 0.0),
    "shipped": (5e-5, 0.5, 1, SHIPPED, 0.0),
    "shipped+distill0.5": (5e-5, 0.5, 1, SHIPPED, 0.5),
    "shipped+lr1e-4": (1e-4, 0.5, 1, SHIPPED, 0.0),
}


def accuracy(model_dir: Path, frame: pd.DataFrame, max_length: int) -> float:
    predicted, _ = predict(model_dir, frame["text"].tolist(), max_length=max_length)
    return float(np.mean(np.asarray(predicted) == frame["label"].to_numpy()))


def batches_of(rows: int, seed: int, order: list[str]) -> dict[str, dict[str, pd.DataFrame]]:
    """The domains as the DVC stage would prepare them (labels outside the label set dropped, as collect does)."""
    sources = ROOT / ".kaizen" / "sources"
    stream.fetch_sources(sources)
    raw = {}
    for i, name in enumerate(order, start=1):
        frame = stream.load_domain(name, sources)
        frame = frame[frame["label"].isin(LABELS)].sample(frac=1.0, random_state=seed).head(rows)
        raw[f"batch-{i:04d}"] = frame[["text", "label"]].reset_index(drop=True)
    settings = load_settings(template("params.yaml"))
    return prepare(raw, settings.preprocess.model_copy(update={"seed": seed}), settings.replay.model_copy(
        update={"ratio": 0.0}))


def run_variant(name: str, prepared, bootstrap: Path, work: Path, seed: int, settings) -> dict:
    lr, ratio, epochs, alphas, distill = VARIANTS[name]
    train_settings = settings.train.model_copy(update={"learning_rate": lr, "seed": seed, "distill_weight": distill})
    max_length = settings.model.max_length
    batches = sorted(prepared)
    champion, samples, per_step, alphas_chosen = bootstrap, 0, [], []
    per_step.append({b: accuracy(champion, prepared[b]["test"], max_length) for b in batches[:1]})
    for k in range(1, len(batches)):
        batch = batches[k]
        pool = {b: prepared[b]["train"] for b in batches[:k]}
        n_replay = min(settings.replay.max_rows, int(round(ratio * len(prepared[batch]["train"]))))
        replay = draw_replay(pool, n_replay, seed + k) if n_replay else pd.DataFrame(columns=["text", "label"])
        train = pd.concat([prepared[batch]["train"], replay[["text", "label"]]], ignore_index=True).sample(
            frac=1.0, random_state=seed)
        teacher = None
        if distill:  # as tasks/training/train.py does it: the champion's log-probabilities on every training row
            _, probs = predict(champion, train["text"].tolist(), max_length=max_length)
            teacher = np.log(np.clip(probs, 1e-7, 1.0))
        tuned = fine_tune(str(champion), train, prepared[batch]["val"], LABELS, model=settings.model,
                          train_settings=train_settings, epochs=epochs, out_dir=work / name / batch,
                          teacher_logits=teacher).model_dir
        samples += len(train) * epochs
        if alphas:
            choice = choose_merge(champion, tuned, {b: prepared[b]["val"] for b in batches[: k + 1]}, batch, alphas,
                                  max_length=max_length, out_dir=work / name / batch / "merged")
            champion = choice.model_dir
            alphas_chosen.append(choice.alpha)
        else:
            champion = tuned
        per_step.append({b: accuracy(champion, prepared[b]["test"], max_length) for b in batches[: k + 1]})
        print(f"  {name}: {batch} done, alpha {alphas_chosen[-1] if alphas else '-'}: {per_step[-1]}", flush=True)
    final = per_step[-1]
    worst = max([0.0] + [max(s[b] for s in per_step if b in s) - final[b] for b in final])
    return {"final": final, "mean": float(np.mean(list(final.values()))), "forgetting": worst, "samples": samples,
            "alphas": alphas_chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--seeds", default="13")
    parser.add_argument("--order", default=",".join(stream.DOMAINS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "sweep")
    parser.add_argument("--joint", action="store_true", help="also retrain on all batches at once (the reference)")
    args = parser.parse_args()
    settings = load_settings(template("params.yaml"))
    order = args.order.split(",")
    results: dict[str, list[dict]] = {}
    began = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        work = args.work / f"seed-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        prepared = batches_of(args.rows, seed, order)
        first = sorted(prepared)[0]
        bootstrap = fine_tune(resolve_backbone(settings.model.backbone), prepared[first]["train"],
                              prepared[first]["val"], LABELS, model=settings.model,
                              train_settings=settings.train.model_copy(update={"seed": seed}),
                              epochs=settings.train.bootstrap_epochs, out_dir=work / "bootstrap",
                              class_weights=balanced_weights(prepared[first]["train"]["label"], LABELS)).model_dir
        for name in args.variants.split(","):
            results.setdefault(name, []).append(run_variant(name, prepared, bootstrap, work, seed, settings))
        if args.joint:
            train = pd.concat([p["train"] for p in prepared.values()], ignore_index=True).sample(frac=1.0,
                                                                                                random_state=seed)
            joint = fine_tune(resolve_backbone(settings.model.backbone), train, prepared[first]["val"], LABELS,
                              model=settings.model, train_settings=settings.train.model_copy(update={"seed": seed}),
                              epochs=settings.train.bootstrap_epochs, out_dir=work / "joint",
                              class_weights=balanced_weights(train["label"], LABELS)).model_dir
            final = {b: accuracy(joint, prepared[b]["test"], settings.model.max_length) for b in sorted(prepared)}
            results.setdefault("joint", []).append({"final": final, "mean": float(np.mean(list(final.values()))),
                                                    "forgetting": 0.0, "samples": len(train) * 2, "alphas": []})
    print(f"\n{args.rows} rows per domain, order {order}, seeds {args.seeds}, "
          f"{time.perf_counter() - began:.0f} s\n")
    names = order
    print("| variant | " + " | ".join(names) + " | mean | worst forgetting | samples | alphas |")
    print("|---|" + "---|" * (len(names) + 4))
    for name, runs in results.items():
        cells = [f"{np.mean([r['final'][f'batch-{i + 1:04d}'] for r in runs]):.3f}" for i in range(len(names))]
        means = [r["mean"] for r in runs]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(means):.3f} ± {np.std(means):.3f} | "
              f"{np.mean([r['forgetting'] for r in runs]):.3f} | {runs[0]['samples']} | "
              f"{[r['alphas'] for r in runs]} |")
    (args.work / "result.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
