"""Hostile files: what one file in the landing zone costs collect (a script that prints a table, not a test).

Each kind is one file (or, for `many-files`, a crowd of them) made once under bench/results/hostile-<scale>/ and
copied into a fresh copy of one workspace (bench/ingest.py's template). Collect runs in a fresh child process:
the seconds are those of `collect()` alone, the peak resident set is the child's own (os.wait4's ru_maxrss,
imports included), compared with the idle loop's (a child that imports collect and opens the workspace). A child
that passes --max-rss-mb or --timeout is killed and reported so: the bench never takes the machine down.
The goal: every kind within 512 MB of the idle loop, time linear in size, quarantine proportional to the file.

    .venv/bin/python bench/hostile.py [--kinds gzip-bomb,xz-text,...] [--scale 1] [--max-rss-mb 4096] [--timeout 600]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

from ingest import RESULTS, template_workspace  # the sibling script: bench/ is on sys.path

MIB = 1 << 20
Build = Callable[[Path, float], int]  # writes a kind's files into a folder at a scale; the bytes they unpack to
HEADER = b"text,label\n"
ROW = b'"A gripping story, told with care; the cast is superb.",positive\n'
FILLER = b"so good "  # the text of the huge cells: no comma, quote or line break, so a CSV needs no quoting
CHILD = """
import json, sys, time
from collections import Counter
from kaizen.tasks.ingest.collect import collect
from kaizen.tasks.workspace.layout import Workspace
ws = Workspace.open(sys.argv[1])
if sys.argv[2] == "idle":
    raise SystemExit
start = time.perf_counter()
result = collect(ws)
seconds = time.perf_counter() - start

def refused_whole(f):  # one quarantine record, of the file rather than of a row
    path = ws.quarantine_dir / f"{f.sha256[:16]}.jsonl"
    if f.rows_accepted or f.rows_quarantined != 1 or not path.exists():
        return False
    try:
        return json.loads(path.read_bytes()[: 1 << 20])["record"] is None
    except ValueError:  # a record longer than a MiB: a row, not the whole file
        return False

reasons = sum((Counter(f.reasons) for f in result.files), Counter())
print(json.dumps({
    "seconds": seconds, "files": len(result.files), "accepted": result.rows_accepted,
    "quarantined": result.rows_quarantined, "whole": sum(refused_whole(f) for f in result.files),
    "reason": reasons.most_common(1)[0][0] if reasons else "", "skipped": [s.reason for s in result.skipped],
    "quarantine_bytes": sum(p.stat().st_size for p in ws.quarantine_dir.glob("*.jsonl")),
}))
"""


# --- the hostile files -------------------------------------------------------------------------------------


def _repeat(out: IO[bytes], piece: bytes, total: int) -> int:
    """Whole copies of `piece`, `total` bytes of them (at least one), written a MiB at a time; the bytes written."""
    copies, per_block = max(1, total // len(piece)), max(1, MIB // len(piece))
    for start in range(0, copies, per_block):
        out.write(piece * min(per_block, copies - start))
    return copies * len(piece)


@contextmanager
def compressed(path: Path) -> Iterator[IO[bytes]]:
    """A new file written through the compression its name ends in (a .zip holds one member, the name before)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive, \
                archive.open(path.stem, "w", force_zip64=True) as member:
            yield member
        return
    with gzip.open(path, "wb") if path.suffix == ".gz" else bz2.open(path, "wb") if path.suffix == ".bz2" \
            else lzma.open(path, "wb") as out:
        yield cast(IO[bytes], out)


def bomb(name: str, mib: float) -> Build:
    """One row over and over, `mib * scale` MiB of it, compressed as `name` ends."""
    def build(folder: Path, scale: float) -> int:
        with compressed(folder / name) as out:
            out.write(HEADER)
            return len(HEADER) + _repeat(out, ROW, int(mib * scale * MIB))
    return build


def huge_line(name: str, mib: float) -> Build:
    """One row whose text is `mib * scale` MiB long, compressed as `name` ends."""
    def build(folder: Path, scale: float) -> int:
        with compressed(folder / name) as out:
            out.write(HEADER)
            written = _repeat(out, FILLER, int(mib * scale * MIB))
            out.write(b",positive\n")
            return len(HEADER) + written + len(b",positive\n")
    return build


def nested(folder: Path, scale: float) -> int:
    """A .zip whose one member, named .csv, is a gzip bomb: read as CSV it is binary, unpacked twice a bomb."""
    unpacked = bomb("inner.csv.gz", 256)(folder, scale)  # then stored as a .csv inside the zip
    with zipfile.ZipFile(folder / "nested.csv.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(folder / "inner.csv.gz", "inner.csv")
    (folder / "inner.csv.gz").unlink()
    return unpacked


def parquet_dictionary(folder: Path, scale: float) -> int:
    """3M rows in one row group, their text one dictionary value of a KiB: kilobytes on disk, gigabytes decoded."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = int(3_000_000 * scale)
    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    text = (ROW.split(b'"')[1] * 20)[:1024].decode()
    table = pa.table({"text": pa.DictionaryArray.from_arrays(zeros, pa.array([text])),
                      "label": pa.DictionaryArray.from_arrays(zeros, pa.array(["positive"]))})
    path = folder / "dictionary.parquet"
    pq.write_table(table, path, row_group_size=rows, use_dictionary=True)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return rows * (len(text) + len("positive"))


def many_fields(folder: Path, scale: float) -> int:
    fields = int(4_000_000 * scale)
    with open(folder / "fields.csv", "wb") as out:
        out.write(HEADER + b"so good,positive")
        written = _repeat(out, b",1", 2 * fields)
        out.write(b"\n")
        return len(HEADER) + len(b"so good,positive") + written + 1


def deep_json(folder: Path, scale: float) -> int:
    depth = int(1_000_000 * scale)
    line = b'{"text": ' + b"[" * depth + b"]" * depth + b', "label": "positive"}\n'
    (folder / "deep.jsonl").write_bytes(line)
    return len(line)


def json_array(folder: Path, scale: float) -> int:
    """One .json array of unique short reviews, `256 MiB * scale` of it."""
    total, i = int(256 * scale * MIB), 0
    with open(folder / "array.json", "wb") as out:
        written = out.write(b"[")
        while written < total:
            piece = "".join(json.dumps({"text": f"Review {n}: a fine film, told with care.", "label": "positive"})
                            + ",\n" for n in range(i, i + 10_000)).encode()
            written += out.write(piece)
            i += 10_000
        written += out.write(json.dumps({"text": "the last review", "label": "negative"}).encode() + b"]\n")
    return written


def many_files(folder: Path, scale: float) -> int:
    unpacked = 0
    for n in range(int(2000 * scale)):
        unpacked += (folder / f"tiny-{n:05d}.csv").write_bytes(HEADER + f"Tiny review number {n},positive\n".encode())
    return unpacked


KINDS: dict[str, Build] = {
    "gzip-bomb": bomb("bomb.csv.gz", 256),
    "bz2-bomb": bomb("bomb.csv.bz2", 256),
    "xz-bomb": bomb("bomb.csv.xz", 256),
    "zip-bomb": bomb("bomb.csv.zip", 256),
    "xz-text": huge_line("text.csv.xz", 24),
    "nested-zip": nested,
    "parquet-dictionary": parquet_dictionary,
    "line-32MiB": huge_line("line32.csv.gz", 32),
    "line-64MiB": huge_line("line64.csv.gz", 64),
    "line-128MiB": huge_line("line128.csv.gz", 128),
    "many-fields": many_fields,
    "deep-json": deep_json,
    "json-array": json_array,
    "many-files": many_files,
}


def made(kind: str, scale: float) -> tuple[Path, int]:
    """The folder of `kind`'s files at `scale`, made once, and the bytes they unpack to."""
    folder = RESULTS / f"hostile-{scale:g}" / kind
    done = folder / ".unpacked"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        done.write_text(str(KINDS[kind](folder, scale)))
    return folder, int(done.read_text())


# --- one measurement ---------------------------------------------------------------------------------------


def run_child(root: Path, mode: str, timeout: float, max_rss: int) -> dict:
    """The child's report, peak RSS (KiB) and wall seconds; killed past `timeout` seconds or `max_rss` bytes."""
    import psutil

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(root), mode], stdout=out, stderr=err)
        watched, killed = psutil.Process(child.pid), ""
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            try:
                rss = watched.memory_info().rss
            except psutil.NoSuchProcess:
                rss = 0
            if not killed and (rss > max_rss or time.monotonic() - start > timeout):
                killed = f"killed at {rss / MIB:,.0f} MiB" if rss > max_rss else f"killed after {timeout:g} s"
                child.kill()
            time.sleep(0.05)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        lines = out.read().decode().strip().splitlines()
        report = json.loads(lines[-1]) if child.returncode == 0 and lines else {}
        if not killed and child.returncode != 0:
            killed = f"failed ({child.returncode}): {err.read().decode()[-300:]}"
    return {**report, "peak_kib": usage.ru_maxrss, "wall": wall, "killed": killed}


def fresh_workspace() -> Path:
    root = RESULTS / "hostile-ws"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template_workspace(), root, symlinks=True)
    (root / "data" / "landing").mkdir(parents=True, exist_ok=True)
    return root


def measure(kind: str, scale: float, timeout: float, max_rss: int) -> dict:
    folder, unpacked = made(kind, scale)
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    root = fresh_workspace()
    for path in files:  # copies: collect refuses a hard link, and removes what it ingested
        shutil.copyfile(path, root / "data" / "landing" / path.name)
    m = run_child(root, "collect", timeout, max_rss)
    shutil.rmtree(root)
    return {**m, "bytes": sum(p.stat().st_size for p in files), "unpacked": unpacked, "count": len(files)}


def outcome(m: dict) -> str:
    if m["killed"]:
        return m["killed"]
    if not m["files"]:
        return f"skipped: {m['skipped'][0] if m['skipped'] else 'nothing collected'}"
    if m["whole"] == m["files"]:
        what = "quarantined whole" if m["files"] == 1 else f"{m['files']:,} files quarantined whole"
        return f"{what}: {m['reason'][:90]}"
    shown = f" ({m['reason'][:60]})" if m["quarantined"] else ""
    return f"{m['accepted']:,} rows accepted, {m['quarantined']:,} quarantined{shown}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"a comma-separated subset of: {', '.join(KINDS)}")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every size (0.01: a quick check)")
    parser.add_argument("--max-rss-mb", type=int, default=4096, help="kill a child whose RSS passes this")
    parser.add_argument("--timeout", type=float, default=600, help="kill a child running longer (seconds)")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {list(KINDS)}")
    max_rss = args.max_rss_mb * MIB
    idle = run_child(fresh_workspace(), "idle", args.timeout, max_rss)["peak_kib"] / 1024
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, scale {args.scale:g}; "
          f"idle loop (imports collect, opens the workspace): {idle:,.0f} MiB RSS")
    print("| kind | files | bytes on disk | unpacked MB | peak RSS MiB | above idle MiB | seconds | quarantine MB "
          "| outcome |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        m = measure(kind, args.scale, args.timeout, max_rss)
        seconds = m.get("seconds", m["wall"])
        print(f"| {kind} | {m['count']:,} | {m['bytes']:,} | {m['unpacked'] / 1e6:,.1f} | {m['peak_kib'] / 1024:,.0f} "
              f"| {m['peak_kib'] / 1024 - idle:,.0f} | {seconds:,.1f} | {m.get('quarantine_bytes', 0) / 1e6:,.1f} "
              f"| {outcome(m)} |", flush=True)


if __name__ == "__main__":
    main()
