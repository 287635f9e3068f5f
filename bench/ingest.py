"""Collect at scale: seconds, rows per second and peak resident memory of one collect of one landed CSV, for
growing files (a script that prints a table, not a test).

Each size is one CSV of synthetic reviews (unique texts of 8 to 30 words, about 150 bytes a row; one row in
100 carries an unknown label and one in 100 repeats the row before it in capitals, so the quarantine path
runs too), generated once under bench/results/ and landed into a fresh copy of one workspace. Collect runs
in a child process: the seconds are those of `collect()` alone (imports and opening the workspace aside), the
memory is the child's peak resident set (ru_maxrss), which includes the imports (the `idle` column).
`--code DIR` measures another checkout of kaizen (a folder holding tasks/, flows/ and kaizen/), for example
the code before a change: `git archive <commit> tasks flows kaizen | tar -x -C DIR`.

    .venv/bin/python bench/ingest.py [--rows 10000,100000,1000000,10000000] [--code DIR] [--delete]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHILD = """
import json, resource, sys, time
from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.workspace.layout import Workspace
ws = Workspace.open(sys.argv[1])
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = collect(ws)
seconds = time.perf_counter() - start
import kaizen.tasks.ingest.collect as code
print(json.dumps({"seconds": seconds, "idle_kib": idle, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "accepted": result.rows_accepted, "quarantined": result.rows_quarantined,
                  "batches": result.new_batches, "code": code.__file__}))
"""


def landed_csv(rows: int) -> Path:
    """The CSV of `rows` rows, made once (deterministic, so every run of every checkout reads the same bytes)."""
    import numpy as np

    path = RESULTS / f"ingest-{rows}.csv"
    if path.exists():
        return path
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(3000)]
    vocabulary[:6] = ["film,", "plot;", '"great"', "dull", "it's", "cast"]  # some quoting for the CSV writer
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("text", "label"))
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            lengths = rng.integers(8, 31, size=n)
            words = rng.integers(0, len(vocabulary), size=int(lengths.sum()))
            at, previous = 0, ""
            for i, length in enumerate(lengths, start):
                text = f"Review {i}: " + " ".join(vocabulary[w] for w in words[at: at + length])
                at += length
                label = "neutral" if i % 100 == 1 else ("positive" if length % 2 else "negative")
                if i % 100 == 3:
                    text = previous.upper()
                writer.writerow((text, label))
                previous = text
    os.replace(tmp, path)
    return path


def template_workspace() -> Path:
    """A workspace made once (git, DVC): each measurement collects into a fresh copy of it."""
    from kaizen.tasks.workspace.members import init_workspace

    root = RESULTS / "ingest-template"
    if not (root / "params.yaml").exists():
        shutil.rmtree(root, ignore_errors=True)
        init_workspace(root, {"data.settle_seconds": 0, "data.min_batch_rows": 100})
    return root


def code_path(code: Path | None) -> dict[str, str]:
    """PYTHONPATH that makes `kaizen` import from checkout `code` (ahead of the editable install)."""
    if code is None:
        return {}
    shadow = RESULTS / "ingest-code" / code.resolve().name
    package = shadow / "kaizen"
    shutil.rmtree(shadow, ignore_errors=True)
    package.mkdir(parents=True)
    shutil.copyfile(code / "kaizen" / "__init__.py", package / "__init__.py")
    for folder, inside in (("templates", code / "kaizen" / "templates"), ("tasks", code / "tasks"),
                           ("flows", code / "flows")):
        (package / folder).symlink_to(inside.resolve())
    return {"PYTHONPATH": str(shadow)}


def measure(rows: int, code: Path | None) -> dict:
    source = landed_csv(rows)
    root = RESULTS / "ingest-ws"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template_workspace(), root, symlinks=True)
    landing = root / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, landing / source.name)  # a copy: collect refuses a hard link, and removes what it read
    env = {**os.environ, **code_path(code)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(root)], env=env, capture_output=True, text=True)
    shutil.rmtree(root)
    if done.returncode != 0:
        raise SystemExit(f"collect of {rows} rows failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "rows": rows, "bytes": source.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="10000,100000,1000000,10000000")
    parser.add_argument("--code", type=Path, help="another kaizen checkout to measure (default: this one)")
    parser.add_argument("--delete", action="store_true", help="delete each generated CSV after its measurement")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, code: "
          f"{args.code or ROOT}")
    print("| rows | file MB | seconds | rows/s | peak RSS MiB | idle RSS MiB | accepted | quarantined | batches |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in (int(n) for n in args.rows.split(",")):
        m = measure(rows, args.code)
        print(f"| {rows:,} | {m['bytes'] / 1e6:,.0f} | {m['seconds']:.1f} | {rows / m['seconds']:,.0f} | "
              f"{m['peak_kib'] / 1024:,.0f} | {m['idle_kib'] / 1024:,.0f} | {m['accepted']:,} | "
              f"{m['quarantined']:,} | {len(m['batches'])} |", flush=True)
        if args.delete:
            landed_csv(rows).unlink()


if __name__ == "__main__":
    main()
