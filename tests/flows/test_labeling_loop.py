"""End to end, choosing what to label: the champion answers real texts (`kaizen score`, recorded in the captures),
the kaizen-select flow queues the most doubtful of them, their labels are filled in from the data set's own and the
queue's CSV lands; the loop ingests the rows with their capture ids, learns them, and its run and the new version
name the queue and the model whose doubt asked for them. Real Prefect, MLflow, DVC, as tests/flows/test_loop.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kaizen.flows.loop import iteration
from kaizen.flows.select import select
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.lineage import LABELING_FILE
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.serving.scoring import score
from kaizen.tasks.workspace.layout import Workspace
from tests.support.files import land, sample
from tests.support.workspaces import FAST, OPEN_GATE, new_workspace, write_params

BUDGET = 60  # labels enough for the tiny model to learn both (with 40 it answered one label, never promoted)


def test_queued_texts_come_back_labeled_and_are_learned_with_their_lineage(tmp_path, tiny_backbone, domains,
                                                                          prefect_server) -> None:
    root = tmp_path / "ws"
    new_workspace(root)
    write_params(root, {**FAST, **OPEN_GATE, "model.backbone": str(tiny_backbone), "data.min_batch_rows": BUDGET})
    ws = Workspace.open(root)
    land(ws, "movies.csv", sample(domains["movies"], 160, seed=1))
    bootstrap = iteration(str(root))
    assert bootstrap["champion_version"] == "1", bootstrap

    truth = sample(domains["amazon"], 120, seed=7)
    truth[["text"]].to_csv(tmp_path / "traffic.csv", index=False)
    score(ws, str(tmp_path / "traffic.csv"), str(tmp_path / "scored.parquet"))  # answered, and so captured
    queue = select(BUDGET, workspace=str(root))
    assert queue["rows"] == BUDGET and queue["reference_rows"] > 0  # the champion's training data was at hand

    sheet = pd.read_csv(queue["files"][0], keep_default_na=False)
    sheet["label"] = sheet["text"].map(truth.drop_duplicates("text").set_index("text")["label"])
    land(ws, "labeled.csv", sheet)
    summary = iteration(str(root))

    assert (summary["batch"], summary["rows_accepted"], summary["decision"]) == ("batch-0002", BUDGET, "promoted"), \
        summary["reasons"]
    batch = pd.read_parquet(ws.batch_file("batch-0002"))
    assert sorted(batch["capture_id"]) == sorted(sheet["capture_id"])
    with Ledger(ws.ledger_db) as ledger:
        assert sorted(c for (c,) in ledger.read("SELECT capture_id FROM row_keys WHERE capture_id IS NOT NULL")) \
            == sorted(sheet["capture_id"])
    splits = pd.concat(pd.read_parquet(ws.split_file("batch-0002", s)) for s in ("train", "val", "test"))
    assert set(splits["capture_id"]) <= set(sheet["capture_id"])

    client = tracking.connect(ws)
    expected = {TAG["labeled_rows"]: str(BUDGET),
                TAG["labeling_queues"]: f"{queue['name']}: {BUDGET} rows, asked by v1"}
    run = client.get_run(summary["run_id"])
    assert {k: run.data.tags[k] for k in expected} == expected
    version = tracking.model_version(client, ws.settings.model.registered_name, summary["champion_version"])
    assert {k: version.tags[k] for k in expected} == expected and version.tags[TAG["batch"]] == "batch-0002"
    logged = json.loads(Path(client.download_artifacts(summary["run_id"], LABELING_FILE)).read_text())
    assert logged == {"rows": BUDGET, "not_from_a_queue": 0,
                      "queues": [{"queue": queue["name"], "model_version": "1", "rows": BUDGET}]}
