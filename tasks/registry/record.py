"""record: what one iteration of the loop did, kept in one place.

An iteration is an MLflow run (`iteration-<batch>`) plus the ledger's row for its batch. This module owns
both ends: the names of its metrics (its tags and decisions are named in tasks/registry/tags.py), its start
(params, lineage tags, the dvc.lock of its data), its close (the ledger, the batch's row counts, `summary.json`)
and the summary read back from the run, which is the one record that `kaizen history`, the flow's return value
and the recovery of a killed attempt share.
MLflow has no parent-model field and no tie to DVC, so the lineage is kept as `kaizen.*` tags.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kaizen.tasks.ingest.corrections import Correction, corrections
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import MLFLOW_TAG, TAG, Decision
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.redact import redact, redact_value

BATCH_METRICS = ("batch.files", "batch.rows_accepted", "batch.rows_quarantined")
DRIFT_SHARE = "drift.share"
SETTINGS_FILE = "settings.json"  # every setting of the iteration, whole (a param longer than MLflow takes is cut)
CORRECTIONS_FILE = "data/corrections.json"  # the label corrections the iteration's data version first applied
LOOP_RUN = "kaizen-loop"  # the parent run that groups every iteration of one workspace


def batches_seen(model) -> list[str]:
    """The batches a model version was trained on, itself and its ancestors (a tracking.ModelRef's tags)."""
    return [b for b in model.tags.get(TAG["batches_seen"], "").split(",") if b]


def score_metric(model: str, batch: str, metric: str) -> str:
    """`champion.<batch>.accuracy`: a model's score on a batch's test split, on the iteration's run."""
    return f"{model}.{batch}.{metric}"


def code_identity() -> tuple[str, str]:
    """(git commit, version) of kaizen's own code. The commit (`+dirty` with uncommitted changes) is known when
    kaizen runs from its source checkout; installed from a wheel it is the version. The version is the package
    version plus a digest of its source files, so two installs of different code never share one."""
    import kaizen

    tasks = Path(__file__).resolve().parents[1]  # tasks/ and flows/ side by side: a checkout, or kaizen/ in a wheel
    folders = [tasks, tasks.parent / "flows"]
    digest = hashlib.sha256()
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        digest.update(path.relative_to(tasks.parent).as_posix().encode() + b"\0" + path.read_bytes())
    version = f"{kaizen.__version__}+src.{digest.hexdigest()[:12]}"
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folders[0], capture_output=True, text=True)
    # Only kaizen's own checkout: a wheel installed in a venv inside some other git repository is not it.
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() / "tasks" != folders[0].resolve():
        return version, version
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folders[0], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folders[0],
                           capture_output=True, text=True).stdout.strip()
    return (head + ("+dirty" if dirty else "") if head else version), version


def params_hash(ws: Workspace) -> str:
    return hashlib.sha256(ws.params_file.read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Iteration:
    """One turn of the loop: its batch, its MLflow run, its data version and the champion it starts from."""

    batch_id: str
    run_id: str
    data_version: str
    accepted_md5: str
    champion: tracking.ModelRef | None  # the champion when the iteration started
    batches: tuple[str, ...]  # every batch up to and including this one
    flow_run_id: str
    loop_run_id: str  # the parent run that groups the workspace's iterations
    lineage: dict[str, str] = field(default_factory=dict)  # the lineage tags, on the run and on its model version


def lineage_tags(ws: Workspace, batch_id: str, data_version, champion, flow_run_id: str) -> dict[str, str]:
    """Where a model comes from: its batch, its data version, its parent model, the code and params."""
    commit, version = code_identity()
    return {TAG["batch"]: batch_id, TAG["data_version"]: data_version.prepared_md5,
            TAG["accepted_md5"]: data_version.accepted_md5,
            TAG["parent_version"]: champion.version if champion else "",
            TAG["code_commit"]: commit, TAG["code_version"]: version, TAG["params_hash"]: params_hash(ws),
            TAG["flow_run_id"]: flow_run_id, TAG["workspace"]: ws.workspace_id}


def correction_tags(applied: list[Correction]) -> dict[str, str]:
    """The label corrections a data version is the first to apply: how many, and the files that made them (on
    the run and its model version; every row in CORRECTIONS_FILE)."""
    if not applied:
        return {}
    files = "\n".join(sorted({f"{c.file_name} ({c.file_sha256[:12]})" for c in applied}))
    return {TAG["corrections"]: str(len(applied)),
            TAG["correction_files"]: tracking.fit_lines(files, tracking.RUN_TAG_CHARS, CORRECTIONS_FILE)}


def corrections_record(applied: list[Correction]) -> dict:
    """Every corrected row, per batch: its text, old and new label, and the correction file, row and time."""
    batches: dict[str, list[dict]] = {}
    for c in applied:
        batches.setdefault(c.batch_id or "staged", []).append(
            {"text": c.text, "old_label": c.old_label, "new_label": c.new_label, "file": c.file_name,
             "file_sha256": c.file_sha256, "row": c.row, "at": c.at})
    return {"corrections": len(applied), "batches": batches}


class ForeignModel(RuntimeError):
    """The registered model belongs to another workspace on the same tracking server."""


def claim_model(client, ws: Workspace) -> None:
    """Make sure the registered model is this workspace's: created here with the workspace's tag, or tagged now when
    it has none (made before the tag existed). Another workspace's model is refused: two loops moving one champion
    alias would undo each other."""
    from mlflow.exceptions import MlflowException

    name = ws.settings.model.registered_name
    try:
        owner = client.get_registered_model(name).tags.get(TAG["workspace"])
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, tags={TAG["workspace"]: ws.workspace_id},
                                       description="kaizen: the text classifier kept improving by the loop")
        return
    if owner is None:
        client.set_registered_model_tag(name, TAG["workspace"], ws.workspace_id)
    elif owner != ws.workspace_id:
        raise ForeignModel(
            f"the registered model {name!r} on {redact(ws.tracking_uri)} belongs to workspace {owner!r} (its "
            f"{TAG['workspace']} tag), not to this one ({ws.workspace_id!r}): give this workspace a model of its own "
            f"(model.registered_name in params.yaml); a workspace that moved keeps its name with "
            f"KAIZEN_WORKSPACE_ID={owner}")


def in_workspace(run, ws: Workspace) -> bool:
    """A run of this workspace (runs made before runs were tagged with one count as this workspace's)."""
    return run.data.tags.get(TAG["workspace"], ws.workspace_id) == ws.workspace_id


def loop_run_id(client, experiment_id: str, ws: Workspace) -> str:
    """The workspace's parent run (created once): iteration runs nest under it."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{MLFLOW_TAG['run_name']}` = '{LOOP_RUN}'",
                              max_results=100, order_by=["attributes.start_time ASC"])
    mine = [run for run in runs if in_workspace(run, ws)]
    if mine:
        return mine[0].info.run_id
    return client.create_run(experiment_id, run_name=LOOP_RUN, tags={
        TAG["workspace"]: ws.workspace_id,
        MLFLOW_TAG["note"]: "kaizen: every iteration of this workspace's loop is a child run; the metrics "
                            "here chart the champion's score on each batch over iterations."}).info.run_id


def start_iteration(ws: Workspace, batch_id: str, batches: list[str], data_version,
                    flow_run_id: str = "") -> Iteration:
    """Open the iteration's MLflow run with its params, lineage tags and the dvc.lock that names its data."""
    client = tracking.connect(ws)
    claim_model(client, ws)
    champion = tracking.model_by_alias(client, ws.settings.model.registered_name, tracking.CHAMPION)
    experiment = tracking.experiment_id(client, ws)
    loop_run = loop_run_id(client, experiment, ws)
    lineage = lineage_tags(ws, batch_id, data_version, champion, flow_run_id)
    with Ledger(ws.ledger_db) as ledger:
        applied = corrections(ledger, applied_in=batch_id)
    lineage.update(correction_tags(applied))
    run = client.create_run(experiment, run_name=f"iteration-{batch_id}",
                            tags={MLFLOW_TAG["parent_run"]: loop_run, **lineage})
    if applied:
        client.log_dict(run.info.run_id, corrections_record(applied), CORRECTIONS_FILE)
    # credentials in a URL (storage.landing) masked, in the params and in the settings file alike
    settings = {section: {k: redact_value(v) for k, v in values.items()}
                for section, values in ws.settings.model_dump(mode="json").items()}
    client.log_dict(run.info.run_id, settings, SETTINGS_FILE)
    tracking.log_params(client, run.info.run_id, {f"{section}.{k}": v for section, values in settings.items()
                                                  for k, v in values.items()}, f"the run's {SETTINGS_FILE}")
    client.log_text(run.info.run_id, data_version.lock, "data/dvc.lock")
    return Iteration(batch_id, run.info.run_id, data_version.prepared_md5, data_version.accepted_md5, champion,
                     tuple(batches), flow_run_id, loop_run, lineage)


@dataclass(frozen=True)
class IterationSummary:
    batch: str | None  # None: nothing new to learn from
    files: int
    rows_accepted: int
    rows_quarantined: int
    drift_share: float | None
    champion_score: float | None  # the gate's metric on the new batch's test split
    challenger_score: float | None
    decision: str  # a Decision: promoted, rejected, suspect, skipped, "no new data", failed or rollback
    reasons: list[str]
    champion_version: str | None
    challenger_version: str | None = None
    run_id: str | None = None
    collected: list[str] = field(default_factory=list)  # what collect did with each landed file, in words

    def as_dict(self) -> dict:
        return asdict(self)


def summary_from_run(run, metric: str) -> IterationSummary:
    """The summary of a closed iteration, read back from its MLflow run."""
    tags, metrics = run.data.tags, run.data.metrics
    batch = tags.get(TAG["batch"])
    return IterationSummary(
        batch=batch, files=int(metrics.get(BATCH_METRICS[0], 0)), rows_accepted=int(metrics.get(BATCH_METRICS[1], 0)),
        rows_quarantined=int(metrics.get(BATCH_METRICS[2], 0)), drift_share=metrics.get(DRIFT_SHARE),
        champion_score=metrics.get(score_metric("champion", batch, metric)),
        challenger_score=metrics.get(score_metric("challenger", batch, metric)),
        decision=tags.get(TAG["decision"]), reasons=tags.get(TAG["reasons"], "").splitlines(),
        champion_version=tags.get(TAG["champion_version"]) or None,
        challenger_version=tags.get(TAG["challenger_version"]) or None, run_id=run.info.run_id)


def close_iteration(ws: Workspace, batch_id: str, run_id: str, decision: str,
                    model_version: str | None) -> IterationSummary:
    """Close the batch in the ledger and the run in MLflow, once the decision is recorded on the run; the summary
    is what the iteration did."""
    with Ledger(ws.ledger_db) as ledger:
        files = [f for f in ledger.files() if f.batch_id == batch_id]
        ledger.finish_batch(batch_id, run_id=run_id, model_version=model_version, decision=decision)
    client = tracking.connect(ws)
    counts = (len(files), sum(f.rows_accepted for f in files), sum(f.rows_quarantined for f in files))
    tracking.log_metrics(client, run_id, dict(zip(BATCH_METRICS, counts, strict=True)))
    summary = summary_from_run(client.get_run(run_id), ws.settings.gate.metric)
    client.log_dict(run_id, summary.as_dict(), "summary.json")
    client.set_terminated(run_id, "FINISHED")
    return summary


def decided_runs(ws: Workspace) -> list:
    """Every run that recorded a decision (iterations, rollbacks), oldest first; killed attempts, redone by a
    later run, are left out."""
    client = tracking.connect(ws)
    runs = client.search_runs([tracking.experiment_id(client, ws)], filter_string=f"tags.`{TAG['decision']}` != ''",
                              order_by=["attributes.start_time ASC"], max_results=10000)
    return [run for run in runs if run.data.tags.get(TAG["decision"]) != Decision.ORPHANED and in_workspace(run, ws)]
