"""The workspace as a repository: git + DVC, the machine-specific values its stage reads, and its DVC remote
(params.yaml's storage.dvc_remote, or the local folder under `.kaizen/`), and how kaizen runs their tools: git as
a command, DVC as a library in this process (a `dvc` process spent about a second on imports, three an iteration).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kaizen.tasks.workspace.files import write_atomically

if TYPE_CHECKING:
    from dvc.repo import Repo


def run_command(args: list[str], cwd: Path) -> str:
    """Run a tool; on failure raise with its own words, so nothing is swallowed."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n{result.stderr or result.stdout}"
        )
    return result.stdout


STAGE_ERRORS = "KAIZEN_STAGE_ERRORS"  # the file a DVC stage kaizen runs writes its traceback to, if it fails
DVC_COMMANDS = {"repro": {"--single-item"}, "push": set(), "pull": {"--force"}}  # what kaizen asks of DVC
DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")


def dvc_repo_class() -> type[Repo]:
    """DVC's `Repo`, imported as a library. DVC's import is made for its CLI: colorama wraps sys.stdout and
    sys.stderr, and its loggers print to the streams of that moment. kaizen keeps its own streams, and DVC's
    warnings and errors reach kaizen's logging instead (its INFO lines narrate each stage)."""
    streams = sys.stdout, sys.stderr
    from dvc.repo import Repo as DvcRepo

    sys.stdout, sys.stderr = streams
    for name in DVC_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.WARNING)
    return DvcRepo


class _DvcSaid(logging.Handler):
    """DVC's warnings and errors during one command: some failures (a push's per-file reasons) are only logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage() + (f" ({record.exc_info[1]})" if record.exc_info else ""))


def run_dvc_command(root: Path, args: tuple[str, ...], stage_env: Mapping[str, str]) -> None:
    """`dvc repro|push|pull [--single-item|--force] [TARGET...]` in the repository `root`, through DVC's Python API;
    the stages of `repro` run with `stage_env`. A failure raises RuntimeError in DVC's own words, with the
    traceback of a stage that failed."""
    command, *rest = args
    flags = {a for a in rest if a.startswith("-")}
    targets = [a for a in rest if not a.startswith("-")] or None
    if command not in DVC_COMMANDS or flags - DVC_COMMANDS[command]:
        raise ValueError(f"kaizen does not run `dvc {' '.join(args)}`: only {sorted(DVC_COMMANDS)}, with "
                         f"{sorted(set().union(*DVC_COMMANDS.values()))}")
    repo_class = dvc_repo_class()
    said, loggers = _DvcSaid(), [logging.getLogger(name) for name in DVC_LOGGERS]
    for logger in loggers:
        logger.addHandler(said)
    with tempfile.TemporaryDirectory(prefix="kaizen-stage-") as folder:
        errors = Path(folder) / "errors.txt"
        try:  # DVC resolves its targets against the working directory, as its CLI does
            with contextlib.chdir(root), repo_class(str(root)) as repo:
                if command == "repro":
                    repo.reproduce(targets, single_item="--single-item" in flags,
                                   run_env={**stage_env, STAGE_ERRORS: str(errors)})
                elif command == "push":
                    repo.push(targets)
                else:
                    repo.pull(targets, force="--force" in flags)
        except Exception as exc:  # DVC's own errors and the OS's (a remote it cannot write), as its CLI reports them
            words: list[str] = []
            cause: BaseException | None = exc
            while cause is not None:
                words.append(str(cause))
                cause = cause.__cause__
            stage = errors.read_text(encoding="utf-8") if errors.exists() else ""
            raise RuntimeError(f"`dvc {' '.join(args)}` failed in {root}: {': '.join(words)}"
                               + "".join(f"\nDVC: {line}" for line in said.lines)
                               + (f"\nthe stage's error:\n{stage}" if stage else "")) from exc
        finally:
            for logger in loggers:
                logger.removeHandler(said)


def init_dvc(root: Path) -> None:
    """`dvc init` (git-tracked) in `root`."""
    dvc_repo_class().init(str(root)).close()


# What DVC must not read as part of the pipeline: kaizen's own dvc.yaml template (the repository's copy when a
# checkout is the workspace, as for `make demo`, or an installed package's inside the workspace). Its `vars`
# name a file relative to the template's folder, so a `dvc push` that collects every dvc.yaml would fail there.
DVC_IGNORED = ("**/kaizen/templates/",)


def ignore_in_dvc(root: Path) -> None:
    """Add the patterns of DVC_IGNORED that `root`'s .dvcignore lacks (idempotent)."""
    path = root / ".dvcignore"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    missing = [p for p in DVC_IGNORED if p not in text.splitlines()]
    if missing:
        lines = [text.rstrip("\n")] if text.strip() else []
        write_atomically(path, ("\n".join([*lines, "# kaizen's templates are not this workspace's pipeline",
                                            *missing]) + "\n").encode("utf-8"))


TRUST_FILE = Path("data") / "trust.json"  # the suspect batches, relative to the workspace (Workspace.trust_file)


def write_trust_file(path: Path, suspect: list[str]) -> None:
    """The suspect batches as the DVC stage reads them; rewritten only when the list changes, so an unchanged
    ledger leaves the data version as it was."""
    text = json.dumps({"suspect": sorted(suspect)}, indent=1) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_atomically(path, text.encode("utf-8"))


def write_stage_vars(root: Path, learning: str | None = None, batches: list[str] | None = None) -> Path:
    """The values `dvc.yaml` reads (its `vars`): the interpreter that runs the stages, so a `dvc repro` by hand
    uses this environment's kaizen whatever `python` is first on PATH; the folder of the stages' code, which they
    list among their dependencies; the accepted batches, one `split` stage each; and the batch being learned,
    whose replay sample the `replay` stage draws (`learning`; by default the newest, as for a `dvc repro` by
    hand). `batches` default to the files in data/accepted. Rewritten only when they change."""
    stage_vars = root / ".kaizen" / "stage.yaml"
    if batches is None:
        batches = sorted(p.stem for p in (root / "data" / "accepted").glob("batch-*.parquet"))
    if learning is None:
        learning = batches[-1] if batches else "none"
    text = (f"# written by kaizen for dvc.yaml (machine-specific, never committed)\n"
            f"python: {json.dumps(sys.executable)}\ncode: {json.dumps(str(Path(__file__).resolve().parents[1]))}\n"
            f"batches: {json.dumps(batches)}\nlearning: {json.dumps(learning)}\n")
    if not stage_vars.exists() or stage_vars.read_text(encoding="utf-8") != text:
        stage_vars.parent.mkdir(parents=True, exist_ok=True)
        stage_vars.write_text(text, encoding="utf-8")
    return stage_vars


REMOTE = "kaizen"  # the name of the DVC remote kaizen pushes to and pulls from


def configured_remote(root: Path) -> str | None:
    """The URL of the `kaizen` DVC remote in `.dvc/config` if it is the default, a local one as an absolute path."""
    from configobj import ConfigObj

    config = ConfigObj(str(root / ".dvc" / "config"), encoding="utf-8")  # DVC's own reader, as edit_dvc_config
    if config.get("core", {}).get("remote") != REMOTE:
        return None
    url = config.get(f'remote "{REMOTE}"', {}).get("url")
    # DVC stores a relative path relative to .dvc/.
    return url if url is None or "://" in url else str((root / ".dvc" / url).resolve())


def configure_remote(root: Path, url: str) -> None:
    """Make `url` the default DVC remote of `root`, unless it already is (a no-op costs no DVC start-up)."""
    root = root.resolve()
    if "://" not in url:
        url = str(Path(url).resolve())
    if configured_remote(root) == url:
        return
    # A folder inside the workspace is written relative to .dvc/ (as DVC writes a relative path), so the committed
    # config works in every clone. As `dvc remote add -f -d` does: the section replaced whole, made the default.
    if "://" not in url and Path(url).is_relative_to(root):
        url = os.path.relpath(url, root / ".dvc")
    edit_dvc_config(root / ".dvc" / "config", {"core": {"remote": REMOTE}}, {f'remote "{REMOTE}"': {"url": url}})


def edit_dvc_config(path: Path, update: dict[str, dict[str, str]], replace: dict | None = None) -> None:
    """Set options of a DVC config file (.dvc/config, committed; .dvc/config.local, this machine's) as `dvc config`
    and `dvc remote add` write them: with configobj, DVC's own reader and writer, in this process. A `dvc` command
    takes about a second to start, and a new workspace needed four of them. `update` sets options of sections,
    `replace` sets sections whole."""
    from configobj import ConfigObj

    config = ConfigObj(str(path), encoding="utf-8")  # an empty config where the file is missing
    config.indent_type = "    "  # DVC's own layout
    for section, options in update.items():
        config.setdefault(section, {}).update(options)
    for section, options in (replace or {}).items():
        config[section] = options
    config.write()


def ensure_dvc(root: Path, remote: str | None = None) -> None:
    """Make `root` a git + DVC repository whose default DVC remote is `remote` (default: the local one under
    `.kaizen/`); idempotent. Credentials for a remote come from the environment, as DVC reads them."""
    root = root.resolve()
    write_stage_vars(root)
    if not (root / TRUST_FILE).exists():  # a `dvc repro` before the loop ever ran: no batch is suspect yet
        write_trust_file(root / TRUST_FILE, [])
    if not (root / ".git").exists():
        run_command(["git", "init", "-q", "-b", "main"], root)
    for key, value in (("user.name", "kaizen"), ("user.email", "kaizen@localhost")):
        if subprocess.run(["git", "config", key], cwd=root, capture_output=True).returncode != 0:
            run_command(["git", "config", key, value], root)
    if not (root / ".dvc").exists():
        init_dvc(root)
    ignore_in_dvc(root)
    edit_dvc_config(root / ".dvc" / "config", {"core": {"analytics": "false"}})
    edit_dvc_config(root / ".dvc" / "config.local", {"core": {"site_cache_dir": str(root / ".kaizen" / "dvc-site")}})
    configure_remote(root, remote or str(root / ".kaizen" / "dvc-remote"))
