"""tags: every MLflow tag kaizen writes, and the decisions an iteration records in them.

One home for both, because they are stored: on model versions and runs in MLflow, in the ledger's `decision`
column, in `summary.json`, `kaizen history --json` and the alerts' payloads. A name or value changed here would
no longer find what earlier iterations recorded, so each string stays what it is.

`Decision` lives in this wing (registry), the lowest one that needs its values: the ledger (tasks/ingest/ledger.py,
below) stores whichever decision it is given without reading it; its own strings are other concepts (a batch's
status, an attempt's outcome, a batch's trust: `trusted` / `suspect`).
"""

from __future__ import annotations

from enum import StrEnum


class Decision(StrEnum):
    """What an iteration (or an operator) decided, as recorded in the `kaizen.decision` tag and the ledger. A
    StrEnum: each member is its string, in MLflow, SQL, JSON and f-strings alike."""

    PROMOTED = "promoted"  # the challenger became the champion
    REJECTED = "rejected"  # the gate (or a person) refused it
    SUSPECT = "suspect"  # the batch's labels look wrong: nothing trained (tasks/evaluation/screening.py)
    SKIPPED = "skipped"  # nothing worth training on (unusable batch, or the champion already does well)
    NO_NEW_DATA = "no new data"  # the iteration found no batch to learn from (never recorded on a run)
    FAILED = "failed"  # a batch set aside after failing the same way too often (tasks/operate/failures.py)
    PENDING = "pending"  # on a freshly registered challenger, until the gate decides
    ORPHANED = "orphaned"  # a killed attempt, redone by a later run
    ROLLBACK = "rollback"  # an operator's `kaizen rollback` (a run of its own)
    CORRECTED = "corrected"  # a correction file's labels, a line of `kaizen history` (never recorded on a run)
    LABELS = "labels"  # the label set grew (data.labels), a line of `kaizen history` (never recorded on a run)


# kaizen's own tags, on the model version and on the iteration's run (lineage, decision, rollback).
TAG = {
    "batch": "kaizen.batch",
    "batches_seen": "kaizen.batches_seen",
    "parent_version": "kaizen.parent_version",
    "data_version": "kaizen.data_version",
    "accepted_md5": "kaizen.accepted_md5",
    "code_commit": "kaizen.code_commit",
    "code_version": "kaizen.code_version",
    "params_hash": "kaizen.params_hash",
    "flow_run_id": "kaizen.prefect_flow_run_id",
    # Which workspace a run, a model version or the registered model belongs to (one tracking server, many loops).
    "workspace": "kaizen.workspace",
    "decision": "kaizen.decision",
    "reasons": "kaizen.decision_reasons",
    # On the run only: what the gate said before the alias moved (a kill after it is completed from these).
    "gate_reasons": "kaizen.gate_reasons",
    "challenger_version": "kaizen.challenger_version",
    "champion_version": "kaizen.champion_version",
    "recovered": "kaizen.recovered",
    "start": "kaizen.start",
    "device": "kaizen.device",
    "remarks": "kaizen.remarks",  # what the screening of the batch noticed without stopping it
    "merge_alpha": "kaizen.merge_alpha",
    # The label corrections the iteration's data version is the first to apply (tasks/ingest/corrections.py).
    "corrections": "kaizen.corrections",  # how many
    "correction_files": "kaizen.correction_files",  # which files, one a line: name (sha256 prefix)
    # The batch's rows labeled from `kaizen select`'s queues (tasks/ingest/labeling.py, tasks/registry/lineage.py).
    "labeled_rows": "kaizen.labeling.rows",  # how many
    "labeling_queues": "kaizen.labeling.queues",  # one line a queue: its rows, and the version whose doubt asked
    "error": "kaizen.error",  # on the run of a failed attempt: what it failed with (tasks/operate/failures.py)
    # An operator's rollback: on the restored version, the replaced one, and a run of its own.
    "rollback_from": "kaizen.rollback.from",
    "rollback_to": "kaizen.rollback.to",
    "rollback_reason": "kaizen.rollback.reason",
    "rollback_by": "kaizen.rollback.by",
    "rollback_at": "kaizen.rollback.at",
    "rolled_back": "kaizen.rolled_back",
    # A watch of captured traffic (tasks/serving/watch.py), a run of its own: its window (ISO times, UTC), its
    # verdict, the columns that drifted and what it could not check, one a line.
    "watch_since": "kaizen.watch.since",
    "watch_until": "kaizen.watch.until",
    "watch_verdict": "kaizen.watch.verdict",
    "watch_drifted": "kaizen.watch.drifted_columns",
    "watch_notes": "kaizen.watch.notes",
}

# MLflow's own tags that kaizen writes or searches by.
MLFLOW_TAG = {
    "parent_run": "mlflow.parentRunId",  # an iteration's run nests under the workspace's loop run
    "run_name": "mlflow.runName",
    "note": "mlflow.note.content",  # the run's description in the UI
    "data_context": "mlflow.data.context",  # on a dataset input: "training" or "evaluation"
}
