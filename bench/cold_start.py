"""A cold start against a warm iteration: a machine with an empty folder carries the shared loop on (a script that
prints a table, not a test).

Real services on loopback, as the tests start them: PostgreSQL, SeaweedFS's S3, `mlflow server` on the two.
Machine A makes the loop and learns `--batches` batches of real text with the tiny random BERT; its last iteration
is the warm one (its folder holds everything). Machine B, an empty folder, joins and learns the next batch: the
cold one, restoring the accepted batches, dvc.lock, the prepared splits and the champion first. Then an empty
folder C restores alone, to count the seconds and bytes of the restoration itself.

    .venv/bin/python bench/cold_start.py [--batches 4] [--rows 160]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support: the same real services the tests start

DOMAINS = ("movies", "amazon", "finefood", "airline")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rows", type=int, default=160)
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
    work = Path(tempfile.mkdtemp(prefix="kaizen-cold-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))

    import s3fs

    from bench.scale import tiny_backbone
    from kaizen.flows.loop import iteration
    from kaizen.tasks.data.restore import restore_inputs
    from kaizen.tasks.data.stream import fetch_sources, load_domain, sample_groups
    from kaizen.tasks.runtime.servers import temporary_prefect_server
    from kaizen.tasks.workspace.members import init_workspace, open_member
    from tests.support import services
    from tests.support.processes import environment
    from tests.support.workspaces import FAST, OPEN_GATE, write_params

    backbone = tiny_backbone(work / "tiny-bert")
    fetch_sources(ROOT / ".kaizen" / "sources")
    with services.postgres() as pg, environment(pg["env"]), services.object_store() as store, \
            environment(store["env"]), temporary_prefect_server():
        tag, bucket = uuid.uuid4().hex[:8], store["bucket"]
        backend = pg["create"](f"cold_{tag}")
        storage = {"artifacts": f"s3://{bucket}/{tag}/mlartifacts", "ledger": backend,
                   "dvc_remote": f"s3://{bucket}/{tag}/dvc", "landing": f"s3://{bucket}/{tag}/landing"}
        with services.mlflow_server(backend, storage["artifacts"], work / "mlflow.log") as url:
            init_workspace(work / "a", {f"storage.{k}": v for k, v in {**storage, "tracking_uri": url}.items()})
            write_params(work / "a", {**FAST, **OPEN_GATE, "model.backbone": str(backbone)})
            open_member(work / "a")
            fs = s3fs.S3FileSystem()
            rows = {d: sample_groups(load_domain(d, ROOT / ".kaizen" / "sources"), 0, seed=7) for d in DOMAINS}
            seconds = []
            for i in range(args.batches + 1):
                domain = DOMAINS[i % len(DOMAINS)]
                part = rows[domain].iloc[(i // 4) * args.rows:(i // 4 + 1) * args.rows]
                part = part[part["label"] != "neutral"][["text", "label"]]
                fs.pipe(f"{storage['landing'].removeprefix('s3://')}/{i:03d}-{domain}.csv", part.to_csv(index=False).encode())
                where = work / ("a" if i < args.batches else "b")
                started = time.monotonic()
                summary = iteration(str(where), join=backend)
                seconds.append(time.monotonic() - started)
                print(f"iteration {i + 1} on {where.name}: {summary['decision']} in {seconds[-1]:.1f} s", flush=True)
            c = open_member(init_workspace(work / "c", join=backend).root)
            restored = restore_inputs(c)
            model = folder_bytes(work / "b" / ".kaizen" / "runs" / "models")
    warm, cold = seconds[-2], seconds[-1]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.batches} batches of {args.rows} rows before the cold start\n")
    print("| iteration | seconds |\n|---|---|")
    print(f"| warm (machine A, batch {args.batches}) | {warm:.1f} |")
    print(f"| cold (machine B, empty folder, batch {args.batches + 1}) | {cold:.1f} |")
    print(f"| cold - warm | {cold - warm:+.1f} |")
    print(f"\nrestoration alone (empty folder C): {restored.describe()}; "
          f"{len(restored.batches)} batches, {len(restored.outputs)} outputs, {restored.bytes / 1e6:.2f} MB of data; "
          f"the champion's download {model / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
