"""Latency of the served model on this machine (a script that prints a table, not a test).

A fresh workspace whose champion is the real MiniLM with a classification head, registered as the loop registers
it (tracking.register_model, then the alias move; the head is untrained, which costs the same time as a trained
one), or with --workspace the champion of an existing workspace; served by `kaizen serve-model` (MLflow's
scoring app under uvicorn, one worker) on a loopback port, twice at once: with capture on (params.yaml `capture`,
as shipped: every text recorded) and off. Then, over one kept-alive HTTP connection to each, one request after
another, the two servers taking turns request by request (so both see the same load from whatever else runs),
with real movie snippets:
  one text      a request of one snippet: p50 and p99 latency
  long text     a request of one 3,000-word text (cut at model.max_length tokens)
  batch of 64   a request of 64 snippets: latency and texts per second
and the same through `mlflow.pyfunc.load_model` in this process (what `kaizen predict` and `kaizen score` run),
to show what HTTP and JSON add. The servers are stopped at the end, whatever happens, and the workspace's
`capture.enabled` is put back as it was.

    .venv/bin/python bench/serving.py [--requests 200] [--batches 30] [--capture both|on|off] [--workspace DIR]
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
from datetime import UTC, datetime
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
        try:
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # uvicorn closes a connection idle for 5 s, as one is while the other server answers a slow batch:
            # open it again (a loopback connect, well under a millisecond) and send the request once more.
            connection.close()
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200 or len(answer["predictions"]) != len(texts):
            raise RuntimeError(f"the server answered {response.status}: {answer}")
        return answer["predictions"]

    return call


def measure(calls: dict, snippets: list[str], long: str, requests: int,
            batches: int) -> dict[str, list[tuple[str, int, np.ndarray, int]]]:
    """Each request of each kind sent to every one of `calls` in turn (the first to go alternates), the same texts
    to each: per call, (kind, requests, seconds of each, texts per request)."""
    rng = np.random.default_rng(0)

    def pick(n: int) -> list[str]:
        return [snippets[i] for i in rng.integers(0, len(snippets), size=n).tolist()]

    for call in calls.values():
        timed(call, [pick(1) for _ in range(5)] + [pick(64)])  # warm-up: first calls allocate
    kinds = [("one text", [pick(1) for _ in range(requests)], 1),
             ("one 3,000-word text", [[long]] * max(requests // 4, 10), 1),
             ("batch of 64", [pick(64) for _ in range(batches)], 64)]
    seconds: dict = {name: {kind: [] for kind, _, _ in kinds} for name in calls}
    for kind, requests_of_kind, _ in kinds:
        for i, texts in enumerate(requests_of_kind):
            order = list(calls) if i % 2 == 0 else list(reversed(calls))
            for name in order:
                seconds[name][kind].append(timed(calls[name], [texts])[0])
    return {name: [(kind, len(sent), np.array(seconds[name][kind]), size) for kind, sent, size in kinds]
            for name in calls}


def request_path_cost(ws, requests: int = 20_000) -> tuple[float, float]:
    """Microseconds per request that an app answering at once takes, without and with kaizen's capture wrapper
    (tasks/serving/guarded.py) around it: what capture adds on the request path itself, away from the model's
    noise. The answers are handed to a real writer; they decode to no texts, so nothing is written."""
    import asyncio

    from kaizen.tasks.serving.capture import CaptureWriter
    from kaizen.tasks.serving.guarded import Capture

    async def answering(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"predictions": []}'})

    async def nothing(message) -> None:
        return None

    async def incoming() -> dict:
        return {"type": "http.request", "body": b'{"dataframe_split": {"columns": ["text"], "data": [["x"]]}}'}

    scope = {"type": "http", "path": "/invocations", "method": "POST",
             "headers": [(b"content-type", b"application/json")]}

    async def per_request(app) -> float:
        began = time.perf_counter()
        for _ in range(requests):
            await app(scope, incoming, nothing)
        return 1e6 * (time.perf_counter() - began) / requests

    writer = CaptureWriter(ws, "serve", "0")
    wrapped = Capture(answering, writer, lambda body, kind, answer: ([], []))
    try:
        bare, captured = asyncio.run(per_request(answering)), asyncio.run(per_request(wrapped))
    finally:
        writer.close()
    return bare, captured


def background_cost(model, snippets: list[str], size: int, requests: int = 200) -> float:
    """Milliseconds of the capture writer's thread per answered request of `size` texts: the request and answer
    decoded as the server's writer decodes them (MLflow's parser), and made records. Off the request path, but on
    the same cores: an upper bound on what capture can take from the model."""
    from datetime import UTC, datetime

    from kaizen.tasks.serving.capture import record
    from kaizen.tasks.serving.guarded import exchange_decoder

    decode, texts = exchange_decoder(model), snippets[:size]
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()
    answer = json.dumps({"predictions": [{"prediction": "positive", "p_negative": 0.3, "p_positive": 0.7,
                                          "reason": None}] * size}).encode()
    began = time.perf_counter()
    for _ in range(requests):
        decoded, answers = decode(body, "application/json", answer)
        [record(text, given, datetime.now(UTC), "serve", "1", True) for text, given in
         zip(decoded, answers, strict=True)]
    return 1000 * (time.perf_counter() - began) / requests


def start_server(ws, capture: bool, work: Path) -> tuple[subprocess.Popen, int, float]:
    """`kaizen serve-model` with capture.enabled as asked (read once, at its start), once it answers: (process,
    port, seconds it took)."""
    from kaizen.tasks.workspace.settings import write_overrides

    write_overrides(ws.params_file, {"capture.enabled": capture})
    port, began = free_port(), time.monotonic()
    log_path = work / f"serve-model-capture-{'on' if capture else 'off'}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([KAIZEN, "serve-model", "--port", str(port), "-w", str(ws.root)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    while not pings(port):
        if server.poll() is not None or time.monotonic() - began > 300:
            os.killpg(server.pid, signal.SIGTERM)
            raise RuntimeError(f"the model server did not start; see {log_path}")
        time.sleep(0.5)
    return server, port, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="single-text requests to time")
    parser.add_argument("--batches", type=int, default=30, help="64-text requests to time")
    parser.add_argument("--capture", choices=["both", "on", "off"], default="both",
                        help="serve with capture on, off, or both at once (compared request by request)")
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

    from kaizen.tasks.serving.capture import read_captures
    from kaizen.tasks.workspace.settings import write_overrides

    loads, arms = os.getloadavg(), {"both": (True, False), "on": (True,), "off": (False,)}[args.capture]
    args.work.mkdir(parents=True, exist_ok=True)
    servers: dict[str, tuple[subprocess.Popen, int, float]] = {}
    began = datetime.now(UTC)
    try:
        for capture in arms:
            servers[f"HTTP: kaizen serve-model, capture {'on' if capture else 'off'}"] = start_server(ws, capture,
                                                                                                     args.work)
        served = measure({route: http_caller(port) for route, (_, port, _) in servers.items()}, snippets, long,
                         args.requests, args.batches)
    finally:
        write_overrides(ws.params_file, {"capture.enabled": ws.settings.capture.enabled})  # as it was
        for server, _, _ in servers.values():
            os.killpg(server.pid, signal.SIGTERM)  # the server writes the captures that wait, then exits
            server.wait(timeout=60)
    captured = len(read_captures(ws, since=began, limit_rows=10**9))

    from kaizen.tasks.serving.champion import load_champion

    classifier = load_champion(ws)
    local = measure({"in process": classifier.predict}, snippets, long, args.requests, args.batches)["in process"]
    bare, wrapped = request_path_cost(ws)
    writer_ms = {size: background_cost(classifier.model, snippets, size) for size in (1, 64)}

    import torch

    cpu = platform.processor() or platform.machine()
    print(f"\nkaizen served model latency: {platform.node()}, {os.cpu_count()} CPU cores ({cpu}), torch "
          f"{torch.__version__} with {torch.get_num_threads()} threads; champion "
          f"v{classifier.version} of {ws.root} (backbone {ws.settings.model.backbone}, max_length "
          f"{ws.settings.model.max_length}); `kaizen serve-model` answered after "
          f"{', '.join(f'{startup:.1f} s' for _, _, startup in servers.values())}; {captured} texts captured; load "
          f"average {loads[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other processes share the cores)")
    print(f"{'route':48} {'request':20} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'texts/s':>8}")
    for route, rows in [*served.items(), ("in process: mlflow.pyfunc.load_model", local)]:
        for name, count, seconds, size in rows:
            print(f"{route:48} {name:20} {count:>8} {1000 * np.percentile(seconds, 50):>8.1f} "
                  f"{1000 * np.percentile(seconds, 99):>8.1f} {size * len(seconds) / seconds.sum():>8.1f}")
    print(f"capture on the request path: an app that answers at once takes {bare:.1f} µs a request, "
          f"{wrapped:.1f} µs with the capture wrapper around it; the writer's thread spends "
          f"{writer_ms[1]:.2f} ms on a request of one text, {writer_ms[64]:.2f} ms on one of 64 (decoding it)")


if __name__ == "__main__":
    main()
