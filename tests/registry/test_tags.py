"""tasks.registry.tags: the decisions and tag names are stored (MLflow tags, the ledger, summary.json, `kaizen
history --json`), so each stays the very string that earlier iterations recorded."""

from __future__ import annotations

import json

from kaizen.tasks.registry.tags import MLFLOW_TAG, TAG, Decision


def test_each_decision_is_stored_as_the_string_it_always_was() -> None:
    assert {d.name: d.value for d in Decision} == {
        "PROMOTED": "promoted", "REJECTED": "rejected", "SUSPECT": "suspect", "SKIPPED": "skipped",
        "NO_NEW_DATA": "no new data", "FAILED": "failed", "PENDING": "pending", "ORPHANED": "orphaned",
        "ROLLBACK": "rollback", "CORRECTED": "corrected", "LABELS": "labels"}
    for decision in Decision:  # the plain string wherever it goes: a tag value, JSON, a message, a comparison
        assert str(decision) == f"{decision}" == decision.value and decision == decision.value
        assert json.dumps({"decision": decision}) == json.dumps({"decision": decision.value})


def test_the_tag_names_are_kaizens_own_and_unchanged() -> None:
    assert all(name.startswith("kaizen.") for name in TAG.values()) and len(set(TAG.values())) == len(TAG)
    assert (TAG["decision"], TAG["reasons"], TAG["batch"], TAG["workspace"], TAG["error"]) == (
        "kaizen.decision", "kaizen.decision_reasons", "kaizen.batch", "kaizen.workspace", "kaizen.error")
    assert MLFLOW_TAG == {"parent_run": "mlflow.parentRunId", "run_name": "mlflow.runName",
                          "note": "mlflow.note.content", "data_context": "mlflow.data.context"}
