"""Lineage and history in the MLflow UI: datasets as run inputs, the evaluation matrix, and one parent run per
workspace whose metrics chart the champion's per-batch accuracy over iterations.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kaizen.tasks.ingest.labeling import queues_of
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import Iteration, score_metric
from kaizen.tasks.registry.tags import MLFLOW_TAG, TAG
from kaizen.tasks.registry.tracking import log_metrics
from kaizen.tasks.workspace.layout import Workspace

LABELING_FILE = "data/labeling.json"  # on the iteration's run: the batch's labeled rows by queue


def log_datasets(client, run_id: str, frames: dict[str, pd.DataFrame], context: str, source: Path) -> None:
    """Each frame as an MLflow dataset input of the run (named by batch and split, digest of its content); its
    source is the DVC-tracked folder it was read from (the run's `kaizen.data_version` tag names the version)."""
    from mlflow.data.pandas_dataset import from_pandas  # what mlflow.data.from_pandas is, set there at import
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for name, frame in frames.items():
        with warnings.catch_warnings():  # MLflow registers the local-file source type twice and says so
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            # A logged frame's schema is a record, never enforced on inputs: its hint about integer columns
            # (the judged rows' numbers) does not apply.
            warnings.filterwarnings("ignore", message=r"\s*Hint: Inferred schema contains integer column")
            entity = from_pandas(frame, source=str(source), name=name, targets="label")._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_TAG["data_context"], context)]))
    client.log_inputs(run_id, datasets=inputs)


def labeling_lineage(ws: Workspace, it: Iteration) -> Iteration:
    """Which labeling queues of `kaizen select`, and so which model versions' doubt, asked for the new batch's rows:
    tags on the iteration's run and, through `it.lineage`, on the version it registers; each queue's rows in
    LABELING_FILE. The batch's capture ids come from its accepted file, their queues from the ledger. A batch
    with no row from a queue is left as it is."""
    import pyarrow.parquet as pq

    batch = ws.batch_file(it.batch_id)
    if "capture_id" not in pq.read_schema(batch).names:  # accepted before kaizen kept capture ids
        return it
    ids = [c for c in pq.read_table(batch, columns=["capture_id"])["capture_id"].to_pylist() if c]
    if not ids:
        return it
    with Ledger(ws.ledger_db) as ledger:
        known = queues_of(ledger, sorted(set(ids)))
    shares = Counter((known[c].queue, known[c].model_version) for c in ids if c in known)
    unknown = sum(1 for c in ids if c not in known)
    lines = [f"{queue}: {n} rows, asked by v{version}" for (queue, version), n in sorted(shares.items())]
    lines += [f"{unknown} rows name a capture that no queue of this loop holds"] if unknown else []
    tags = {TAG["labeled_rows"]: str(len(ids)),
            TAG["labeling_queues"]: tracking.fit_lines("\n".join(lines), tracking.RUN_TAG_CHARS, LABELING_FILE)}
    client = tracking.connect(ws)
    tracking.set_tags(client, it.run_id, tags)
    client.log_dict(it.run_id, {"rows": len(ids), "not_from_a_queue": unknown,
                                "queues": [{"queue": queue, "model_version": version, "rows": n}
                                           for (queue, version), n in sorted(shares.items())]}, LABELING_FILE)
    return replace(it, lineage={**it.lineage, **tags})


def evaluation_matrix(evaluation) -> pd.DataFrame:
    """One row per (model, batch): accuracy and macro F1 on that batch's test split."""
    rows = []
    for model in ("champion", "challenger"):
        accuracy, f1 = evaluation.scores(model, "accuracy"), evaluation.scores(model, "f1")
        rows += [{"model": model, "batch": b, "accuracy": accuracy[b], "f1": f1[b]} for b in accuracy or {}]
    return pd.DataFrame(rows, columns=["model", "batch", "accuracy", "f1"])


HEATMAP_BATCHES = 20  # wider is unreadable, and drawing grows with the history; matrix.json keeps every batch


def heatmap(matrix: pd.DataFrame, metric: str, path: Path) -> Path:
    """Models by batches (the last HEATMAP_BATCHES of them), coloured by `metric`, each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    full = matrix.pivot(index="model", columns="batch", values=metric).reindex(["champion", "challenger"]).dropna(
        how="all")
    grid = full.iloc[:, -HEATMAP_BATCHES:]  # batch ids sort in order of arrival
    fig, ax = plt.subplots(figsize=(2.2 + 0.75 * grid.shape[1], 1.2 + 0.5 * grid.shape[0]))
    image = ax.imshow(grid.values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid.values[i, j]
            if pd.notna(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 else "black")
    ax.set_title(f"{metric} on each batch's test split" + (f" (last {grid.shape[1]} of {full.shape[1]} batches)"
                                                             if full.shape[1] > grid.shape[1] else ""))
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_evaluation_matrix(client, run_id: str, evaluation, report_dir: Path) -> pd.DataFrame:
    matrix = evaluation_matrix(evaluation)
    client.log_table(run_id, data=matrix, artifact_file="evaluation/matrix.json")
    png = heatmap(matrix, "accuracy", report_dir.parent / "evaluation" / "matrix-accuracy.png")
    client.log_artifact(run_id, str(png), "evaluation")
    return matrix


def forgetting_and_bwt(now: dict[str, float], best: dict[str, float], first: dict[str, float]
                       ) -> tuple[dict[str, float], float | None]:
    """Avalanche's continual-learning measures at one step, from the champion's accuracy `now` on each batch and,
    for the batches seen at earlier steps, their `best` accuracy at any earlier step and their `first` (just
    after they were learned): forgetting is best minus now; backward transfer (Lopez-Paz & Ranzato) the mean of
    now minus first. Running values, so a step costs the same however long the history."""
    earlier = [b for b in now if b in best and b in first]
    forgetting = {b: best[b] - now[b] for b in earlier}
    transfer = [now[b] - first[b] for b in earlier]
    return forgetting, (sum(transfer) / len(transfer) if transfer else None)


def log_champion_over_time(client, loop_run: str, step: int, evaluation, promoted: bool,
                           iteration_run: str | None = None) -> None:
    """After the decision: the champion's score on every batch, as step `step` of the loop run's metrics, and
    the forgetting and backward transfer they give, from each batch's running best and first accuracy (kept on
    the loop run: one read, whatever the number of batches)."""
    model = "challenger" if promoted or evaluation.scores("champion", "accuracy") is None else "champion"
    accuracy, f1 = evaluation.scores(model, "accuracy"), evaluation.scores(model, "f1")
    before = client.get_run(loop_run).data.metrics
    best = {b: before[f"best.{b}.accuracy"] for b in accuracy if f"best.{b}.accuracy" in before}
    first = {b: before[f"first.{b}.accuracy"] for b in accuracy if f"first.{b}.accuracy" in before}
    forgetting, bwt = forgetting_and_bwt(accuracy, best, first)
    metrics = {score_metric("champion", b, "accuracy"): v for b, v in accuracy.items()}
    metrics.update({score_metric("champion", b, "f1"): v for b, v in f1.items()})
    metrics["champion.mean_accuracy"] = sum(accuracy.values()) / len(accuracy)
    metrics.update({f"best.{b}.accuracy": max(v, best.get(b, v)) for b, v in accuracy.items()})
    metrics.update({f"first.{b}.accuracy": first.get(b, v) for b, v in accuracy.items()})
    measures = {f"forgetting.{b}": f for b, f in forgetting.items()}
    if forgetting:
        measures["forgetting.max"] = max(forgetting.values())
    if bwt is not None:
        measures["bwt"] = bwt
    log_metrics(client, loop_run, {**metrics, **measures}, step=step)
    if measures and iteration_run:
        log_metrics(client, iteration_run, measures, step=step)
    client.set_terminated(loop_run, "FINISHED")  # shown as done between iterations; metrics can still be added
