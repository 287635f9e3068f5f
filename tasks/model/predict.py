"""predict: labels and class probabilities from a model folder, and the scores of predictions against labels.

Apart from training: the gate, batch scoring and `kaizen predict` need a model's outputs, never a Trainer.
This module and tasks/formats/text.py travel inside every logged model (tasks/serving/champion.py, `code_paths`), so they import
nothing of kaizen's but each other, and nothing heavier than numpy, pandas, torch and transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from kaizen.tasks.formats.text import normalize_text


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no GPU (install a CUDA build of torch)")
    return setting


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 (per label 2·hits / (rows labelled + rows predicted), averaged over the labels
    either side names), as scikit-learn gives them with zero_division=0. In numpy because an iteration asks for
    them per model, per batch and per metric: scikit-learn's input checks cost a millisecond a call, which grew
    with the history."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"scores need as many predictions as labels, at least one: {len(y_true)} and {len(y_pred)}")
    f1 = []
    for label in np.union1d(y_true, y_pred):
        true, predicted = y_true == label, y_pred == label
        hits = np.count_nonzero(true & predicted)
        f1.append(2 * hits / (np.count_nonzero(true) + np.count_nonzero(predicted)))
    return {"accuracy": float(np.mean(y_true == y_pred)), "f1": float(np.mean(f1))}


def load(model_dir: Path | str, device: str = "auto"):
    """Tokenizer and network of a model folder (safetensors only: never unpickle weights), ready for inference on
    `device` (auto: the GPU when there is one)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    device = pick_device(device)
    logging.disable_progress_bar()  # a bar per load is noise in a server's log and in `kaizen predict`'s output
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).to(device).eval()
    return tokenizer, net


def model_labels(model_dir: Path | str) -> list[str]:
    """A model folder's labels in class-id order (its config's id2label): the order of its probabilities."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return [config.id2label[i] for i in range(config.num_labels)]


def probabilities(tokenizer, net, texts: Sequence[str], *, max_length: int, batch_size: int = 64,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Class probabilities for `texts`, batched, shortest-first so padding stays small; every text cut at
    `max_length` tokens; `progress(done, total)` after every batch."""
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")
    probs = np.zeros((len(texts), net.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(net.device)
            probs[idx] = torch.softmax(net(**enc).logits.float(), dim=-1).cpu().numpy()
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    return probs


def predict(model_dir: Path | str, texts: Sequence[str], *, max_length: int, batch_size: int = 64,
            device: str = "auto", progress: Callable[[int, int], None] | None = None) -> tuple[list[str], np.ndarray]:
    """Labels and class probabilities for texts that are already normalised (the DVC stage's splits)."""
    tokenizer, net = load(model_dir, device)
    probs = probabilities(tokenizer, net, texts, max_length=max_length, batch_size=batch_size, progress=progress)
    id2label = net.config.id2label
    return [id2label[int(i)] for i in probs.argmax(axis=1)], probs


def unusable(text: object, lowercase: bool) -> str | None:
    """Why `text` cannot be classified, or None when it can."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return "no text (missing value)"
    if not isinstance(text, str):
        return f"the text is a {type(text).__name__}, not a string"
    if not normalize_text(text, lowercase):
        return "empty text"
    return None


def classify(tokenizer, net, texts: Sequence[object], *, max_length: int, lowercase: bool, batch_size: int = 64,
             progress: Callable[[int, int], None] | None = None):
    """The one path of every prediction kaizen serves (the served model, `kaizen predict`, `kaizen score`): each
    text normalised as the DVC stage normalised the training data, cut at the trained `max_length`, labelled with
    every class's probability. A value that is no usable text gets a `reason` instead of a label, never an error.
    Returns a DataFrame: `prediction`, `p_<label>` for each class, `reason` (None where a label was given)."""
    import pandas as pd

    reasons = [unusable(text, lowercase) for text in texts]
    usable = [i for i, reason in enumerate(reasons) if reason is None]  # strings: `unusable` said so
    probs = probabilities(tokenizer, net, [normalize_text(cast(str, texts[i]), lowercase) for i in usable],
                          max_length=max_length, batch_size=batch_size, progress=progress)
    labels = [net.config.id2label[i] for i in range(net.config.num_labels)]
    # Object columns: a row without a label has None (JSON null, Parquet null), not NaN, as its probabilities.
    columns: dict[str, list] = {"prediction": [None] * len(texts), **{f"p_{label}": [None] * len(texts) for label in labels}}
    for row, p in zip(usable, probs, strict=True):
        columns["prediction"][row] = labels[int(p.argmax())]
        for label, value in zip(labels, p.tolist(), strict=True):
            columns[f"p_{label}"][row] = value
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in
                         {**columns, "reason": reasons}.items()})
