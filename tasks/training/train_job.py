"""The training job: one fine-tune, in the loop's own process, or in several processes with `accelerate launch`
(DDP: one process per GPU; gloo on a CPU), started by tasks/train.fine_tune, which keeps everything after it.

The job's interface is its folder: `spec.json` (what to train and how), `train.parquet`, `val.parquet` and
`teacher.npy`; it writes `epochs.jsonl` (a line per epoch as it ends, which the caller logs live), the
checkpoints and `model/` (safetensors and tokenizer) in the output folder, and `result.json` last. Nothing
else passes between the two, so the job could as well run on another machine that sees the folder.

    python -m kaizen.tasks.training.train_job JOB                   # one process of its own
    python -m kaizen.tasks.training.train_job JOB --processes N     # N processes through accelerate launch
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.model.predict import pick_device, scores
from kaizen.tasks.workspace.faults import kill_point
from kaizen.tasks.workspace.settings import ModelSettings, TrainSettings


def load_for_training(start: str, labels: Sequence[str], new_head: bool = False):
    """Model and tokenizer from a folder or hub id. A start that names labels of its own (a champion, its head
    grown first by tasks/training/head.py when labels were appended) keeps its head and must name exactly
    `labels`: a silent new head would throw away what it learned. A start that names none (a bare encoder), or
    any start with `new_head` (a bootstrap), gets a new classification head for `labels`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kaizen.tasks.training.head import LabelSetError, appended, label_config, own_labels

    own = None if new_head else own_labels(start)
    if own is not None and appended(own, labels, start):  # raises when a label was removed, renamed or reordered
        raise LabelSetError(f"{start} knows the labels {own}, not data.labels {list(labels)}: its head is grown "
                            "to the appended labels before training (head.start_with_labels)")
    model = AutoModelForSequenceClassification.from_pretrained(
        start, **label_config(labels), ignore_mismatched_sizes=own is None,
        use_safetensors=True,  # never unpickle weights
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


def encoded(tokenizer, frame: pd.DataFrame, label_id: dict[str, int], max_length: int,
            teacher_logits: np.ndarray | None = None) -> _Encoded:
    """`frame` (text, label) tokenized, with the teacher's logits per row when distilling."""
    return _Encoded(tokenizer, frame["text"].tolist(), [label_id[y] for y in frame["label"]], max_length,
                    teacher_logits)


def distilling_trainer(weight: float, temperature: float, class_weights: list[float] | None = None):
    """A Trainer whose loss mixes in KL to the champion's outputs (learning without forgetting), for rows that
    carry `teacher_logits`; rows without them (validation) get the plain loss. With `class_weights` (one per
    label) the cross-entropy weighs each row by its label's weight."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer

    class DistillingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            teacher = inputs.pop("teacher_logits", None)
            outputs = model(**inputs)
            loss = outputs.loss
            if class_weights is not None and "labels" in inputs:
                w = torch.tensor(class_weights, dtype=outputs.logits.dtype, device=outputs.logits.device)
                loss = F.cross_entropy(outputs.logits, inputs["labels"], weight=w)
            if teacher is not None and weight > 0:
                # Over the teacher's classes only: labels appended since (tasks/training/head.py) are new to it.
                student = outputs.logits[..., : teacher.shape[-1]]
                kd = F.kl_div(F.log_softmax(student / temperature, dim=-1),
                              F.softmax(teacher.to(outputs.logits.dtype) / temperature, dim=-1),
                              reduction="batchmean") * temperature**2
                loss = (1 - weight) * loss + weight * kd
            return (loss, outputs) if return_outputs else loss

    return DistillingTrainer


def die_with_parent() -> None:
    """Linux: the kernel kills this process when the one that started it dies, so a killed loop never leaves a
    training job behind writing into the folder its next attempt resumes from."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before the line above: it is already too late
        sys.exit("training job: the process that started it is gone")


def launch(job: Path, processes: int) -> None:
    """`accelerate launch` of this module on `job` with `processes` processes on this machine, in this process
    (so that it, too, dies with its parent). On a CPU the ranks talk over gloo."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--main_process_port", "0",
        "--mixed_precision", "no", "--dynamo_backend", "no",  # the Trainer's own bf16 / fp16 decide
        "-m", "kaizen.tasks.training.train_job", str(job)])
    launch_command(args)


def run(job: Path, after_epoch: Callable[[], None] = lambda: None) -> None:
    """Train as `job/spec.json` says; every rank runs this, the main one writes what the caller reads.
    `after_epoch` is called once an epoch's line is written (run in the caller's process: it logs the line)."""
    import torch
    from transformers import DataCollatorWithPadding, TrainerCallback, TrainingArguments, set_seed

    spec = json.loads((job / "spec.json").read_text(encoding="utf-8"))
    model, settings = ModelSettings.model_validate(spec["model"]), TrainSettings.model_validate(spec["train"])
    out_dir, device, labels = Path(spec["out_dir"]), pick_device(settings.device), spec["labels"]  # this machine's
    train, val = pd.read_parquet(job / "train.parquet"), pd.read_parquet(job / "val.parquet")
    teacher = np.load(job / "teacher.npy") if (job / "teacher.npy").exists() else None
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    # Written, not printed: in a Prefect run print goes to the run's log, and train.log is where the caller looks.
    sys.stdout.write(f"training job: rank {rank} of {world} processes on {device}, {len(train)} rows, "
                     f"{spec['epochs']} epochs\n")
    sys.stdout.flush()
    set_seed(settings.seed)
    net, tokenizer = load_for_training(spec["start"], labels, spec.get("new_head", False))

    class Progress(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not state.is_world_process_zero:
                return
            row = {k.removeprefix("eval_"): float(v) for k, v in (metrics or {}).items()
                   if k in ("eval_loss", "eval_accuracy", "eval_f1")}
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            if losses:
                row["train_loss"] = float(losses[-1])
            with (job / "epochs.jsonl").open("a", encoding="utf-8") as out:
                out.write(json.dumps({"epoch": int(round(state.epoch or 0)), **row}) + "\n")
            after_epoch()

        def on_save(self, args, state, control, **kwargs):
            kill_point("train:checkpoint")  # tests: the next run must resume from this checkpoint

    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), num_train_epochs=spec["epochs"],
        # batch_size is per optimiser step: the processes share it
        per_device_train_batch_size=max(1, settings.batch_size // settings.processes), per_device_eval_batch_size=64,
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio, lr_scheduler_type="linear",
        eval_strategy="epoch" if len(val) else "no", save_strategy="epoch", save_total_limit=1,
        logging_strategy="epoch", report_to="none", train_sampling_strategy="group_by_length",
        use_cpu=device == "cpu", bf16=bf16, fp16=device == "cuda" and not bf16,
        seed=settings.seed, dataloader_num_workers=0, save_only_model=False,
        remove_unused_columns=False,  # keep teacher_logits: compute_loss takes them out itself
    )
    label_id = {label: i for i, label in enumerate(labels)}
    trainer = distilling_trainer(settings.distill_weight, settings.distill_temperature, spec.get("class_weights"))(
        model=net, args=args, train_dataset=encoded(tokenizer, train, label_id, model.max_length, teacher),
        eval_dataset=encoded(tokenizer, val, label_id, model.max_length) if len(val) else None,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: scores(p.label_ids, np.argmax(p.predictions, axis=-1)),
        callbacks=[Progress()],
    )
    checkpoints = sorted((out_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    began = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - began
    trainer.save_model(str(out_dir / "model"))  # safetensors with the tokenizer beside it (the main rank writes)
    if trainer.is_world_process_zero():
        (out_dir / "model" / "training_args.bin").unlink(missing_ok=True)  # a pickle: never ship one
        (job / "result.json").write_text(json.dumps({"seconds": seconds, "device": device}), encoding="utf-8")


def main(argv: list[str]) -> None:
    die_with_parent()
    job = Path(argv[0])
    if "--processes" in argv:
        launch(job, int(argv[argv.index("--processes") + 1]))
    else:
        run(job)


if __name__ == "__main__":
    main(sys.argv[1:])
