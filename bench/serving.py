"""Latency of the served model on this machine (a script that prints a table, not a test).

A fresh workspace whose champion is the real MiniLM with a classification head, registered as the loop registers
it (tracking.register_model, then the alias move; the head is untrained, which costs the same time as a trained
one), or with --workspace the champion of an existing workspace; served by `kaizen serve-model` (`mlflow models
serve`, local env manager, one worker) on a loopback port. Then, over one kept-alive HTTP connection, one
request after another, with real movie snippets:
  one text      a request of one snippet: p50 and p99 latency
  long text     a request of one 3,000-word text (cut at model.max_length tokens)
  batch of 64   a request of 64 snippets: latency and texts per second
and the same through `mlflow.pyfunc.load_model` in this process (what `kaizen predict` and `kaizen score` run),
to show what HTTP and JSON add. The server is stopped at the end, whatever happens.

    .venv/bin/python bench/serving.py [--requests 200] [--batches 30] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
from latency import KAIZEN, ROOT, free_port  # the sibling script (bench/ is on sys.path when run as a script)


def pings(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/ping")
        return connection.getresponse().status == 200
    except OSError:
        return False


def fresh_workspace(work: Path):
    """A new workspace whose champion is MiniLM with a new head, logged and registered as the loop does it."""
    from kaizen.tasks.registry import tracking
    from kaizen.tasks.training.train import resolve_backbone
    from kaizen.tasks.training.train_job import load_for_training
    from kaizen.tasks.workspace.environment import apply_environment
    from kaizen.tasks.workspace.layout import Workspace
    from kaizen.tasks.workspace.members import init_workspace

    shutil.rmtree(work, ignore_errors=True)
    ws = init_workspace(work / "ws")
    apply_environment(ws)  # offline, and Prefect's home inside the workspace
    net, tokenizer = load_for_training(resolve_backbone("minilm"), ws.settings.data.labels)
    net.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    client = tracking.connect(ws)
    run = client.create_run(tracking.experiment_id(client, ws), run_name="bench-serving")
    version = tracking.register_model(client, ws, run.info.run_id, work / "model", {}).version
    tracking.move_champion(client, ws.settings.model.registered_name, version, started_from=None)
    client.set_terminated(run.info.run_id, "FINISHED")
    return Workspace.open(ws.root)


def timed(call, texts_per_call: list[list[str]]) -> np.ndarray:
    seconds = []
    for texts in texts_per_call:
        began = time.perf_counter()
        call(texts)
        seconds.append(time.perf_counter() - began)
    return np.array(seconds)


def http_caller(port: int):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(texts: list[str]) -> list[dict]:
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200 or len(answer["predictions"]) != len(texts):
            raise RuntimeError(f"the server answered {response.status}: {answer}")
        return answer["predictions"]

    return call


def measure(call, snippets: list[str], long: str, requests: int, batches: int) -> list[tuple[str, int, np.ndarray, int]]:
    rng = np.random.default_rng(0)
    pick = lambda n: [snippets[i] for i in rng.integers(0, len(snippets), n)]  # noqa: E731
    timed(call, [pick(1) for _ in range(5)] + [pick(64)])  # warm-up: first calls allocate
    return [("one text", requests, timed(call, [pick(1) for _ in range(requests)]), 1),
            ("one 3,000-word text", max(requests // 4, 10), timed(call, [[long]] * max(requests // 4, 10)), 1),
            ("batch of 64", batches, timed(call, [pick(64) for _ in range(batches)]), 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="single-text requests to time")
    parser.add_argument("--batches", type=int, default=30, help="64-text requests to time")
    parser.add_argument("--workspace", type=Path, default=None, help="serve this workspace's champion instead")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "serving")
    args = parser.parse_args()

    from kaizen.tasks.data.stream import fetch_sources, load_domain
    from kaizen.tasks.workspace.environment import apply_environment
    from kaizen.tasks.workspace.layout import Workspace

    if args.workspace:
        ws = Workspace.open(args.workspace)
        apply_environment(ws)
    else:
        ws = fresh_workspace(args.work)
    sources = Path(os.environ.get("KAIZEN_SOURCES", ROOT / ".kaizen" / "sources"))
    fetch_sources(sources)
    snippets = load_domain("movies", sources)["text"].sample(2000, random_state=1).tolist()
    long = " ".join(snippets)
    long = " ".join(long.split()[:3000])

    port, loads = free_port(), os.getloadavg()
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(args.work / "serve-model.log", "wb") as log:
        server = subprocess.Popen([KAIZEN, "serve-model", "--port", str(port), "-w", str(ws.root)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not pings(port):
            if server.poll() is not None or time.monotonic() - began > 300:
                raise RuntimeError(f"the model server did not start; see {args.work / 'serve-model.log'}")
            time.sleep(0.5)
        startup = time.monotonic() - began
        served = measure(http_caller(port), snippets, long, args.requests, args.batches)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    from kaizen.tasks.serving.champion import load_champion

    classifier = load_champion(ws)
    local = measure(classifier.predict, snippets, long, args.requests, args.batches)

    import torch

    cpu = platform.processor() or platform.machine()
    print(f"\nkaizen served model latency: {platform.node()}, {os.cpu_count()} CPU cores ({cpu}), torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; champion "
          f"v{classifier.version} of {ws.root} (backbone {ws.settings.model.backbone}, max_length "
          f"{ws.settings.model.max_length}); `kaizen serve-model` answered after {startup:.1f} s; load average "
          f"{loads[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
    print(f"{'route':40} {'request':20} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'texts/s':>8}")
    for route, rows in (("HTTP: kaizen serve-model", served), ("in process: mlflow.pyfunc.load_model", local)):
        for name, count, seconds, size in rows:
            print(f"{route:40} {name:20} {count:>8} {1000 * np.percentile(seconds, 50):>8.1f} "
                  f"{1000 * np.percentile(seconds, 99):>8.1f} {size * len(seconds) / seconds.sum():>8.1f}")


if __name__ == "__main__":
    main()
