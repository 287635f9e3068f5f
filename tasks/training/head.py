"""head: a classifier's label set, and growing it when the user appends labels to `data.labels`.

A label set only grows: every class keeps its id, so the champion can start a challenger on the larger set with its
head extended (its classes' rows of the output layer kept, a new row per new label) instead of a new random head
that would throw away what it knew. A label removed, renamed or reordered would silently give an old class's
weights to another: it is refused, naming both lists, before anything trains.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from kaizen.tasks.model.predict import model_labels

WEIGHTS = "model.safetensors"


class LabelSetError(ValueError):
    """`data.labels` is not a model's labels with new ones appended; the message names both lists."""


def label_config(labels: Sequence[str]) -> dict:
    """What from_pretrained needs to give a model the label set `labels` in class-id order (num_labels follows
    id2label: passed too, transformers warns that it differs from the checkpoint's labels)."""
    id2label = dict(enumerate(labels))
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def own_labels(model_dir: Path | str) -> list[str] | None:
    """A model folder's labels in class-id order; None when it names none of its own (transformers' `LABEL_<i>`,
    as a bare encoder or a fresh head has): such a model gets a head for `data.labels` at bootstrap."""
    labels = model_labels(model_dir)
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


def appended(known: Sequence[str], wanted: Sequence[str], model: str) -> list[str]:
    """The labels `wanted` appends to `known` (a model's), [] when they are the same; a LabelSetError when `wanted`
    is anything else than `known` followed by new labels."""
    known, wanted = list(known), list(wanted)
    if wanted[: len(known)] == known:
        return wanted[len(known):]
    raise LabelSetError(
        f"data.labels {wanted} is not {model}'s labels {known} with new labels appended: a label was removed, "
        f"renamed or reordered. A label set only grows, each class keeping its id: keep {known} first, in this "
        "order, and append new labels after them")


def extend_head(model_dir: Path, labels: Sequence[str], out_dir: Path, seed: int) -> Path:
    """The model of `model_dir` with its head grown to `labels` (its own labels, then new ones), saved in `out_dir`:
    the old classes' rows of every per-class weight copied, the new rows initialised as transformers initialises a
    head (seeded, so a retried iteration starts from the same weights); every other weight, and the tokenizer,
    as they were."""
    import torch
    from transformers import AutoModelForSequenceClassification

    old = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    known = [old.config.id2label[i] for i in range(old.config.num_labels)]
    appended(known, labels, str(model_dir))
    torch.manual_seed(seed)
    # The mismatched per-class weights get transformers' own initialisation of a head; the rest loads as it is.
    grown = AutoModelForSequenceClassification.from_pretrained(
        model_dir, use_safetensors=True, ignore_mismatched_sizes=True, **label_config(labels))
    before, after = old.state_dict(), grown.state_dict()
    with torch.no_grad():
        for name, weight in after.items():
            if weight.shape == before[name].shape:
                continue
            if (weight.shape[0], before[name].shape[0]) != (len(labels), len(known)) \
                    or weight.shape[1:] != before[name].shape[1:]:
                raise LabelSetError(f"{model_dir}: {name} {tuple(before[name].shape)} is no per-class weight of "
                                    f"{len(known)} classes: cannot grow it to {len(labels)}")
            weight[: len(known)] = before[name]  # state_dict tensors share the parameters' storage
    shutil.copytree(model_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS, "config.json"))
    grown.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def new_label_rows(champion_dir: Path, start_dir: Path) -> dict[str, int]:
    """The per-class weights that `start_dir` (extend_head's output) grew from `champion_dir`'s, each with its
    number of old rows: the rows after them belong to labels the champion never had. Read from the weight files'
    headers, without loading a model."""
    from safetensors import safe_open

    def shapes(folder: Path) -> dict[str, list[int]]:
        with safe_open(str(Path(folder) / WEIGHTS), framework="pt") as weights:
            return {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118

    old, new = shapes(champion_dir), shapes(start_dir)
    return {name: old[name][0] for name, shape in new.items() if name in old and shape != old[name]}


def start_with_labels(model_dir: Path, labels: Sequence[str], grown_dir: Path, seed: int, model: str) -> Path:
    """Where a fine-tune of `model` (its folder `model_dir`) on `labels` starts: the folder itself when it has
    those labels, else its head extended to them, built once (whole or not at all) under `grown_dir`."""
    from kaizen.tasks.registry.tracking import download_whole

    if not appended(model_labels(model_dir), labels, model):
        return model_dir
    key = hashlib.sha256(json.dumps([str(model_dir), list(labels), seed]).encode()).hexdigest()[:12]
    return download_whole(grown_dir / f"grown-{key}",
                          lambda partial: extend_head(model_dir, labels, partial / "model", seed))
