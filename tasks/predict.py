"""predict: labels and class probabilities from a model folder, and the scores of predictions against labels.

Apart from training: the gate, batch scoring and `kaizen predict` need a model's outputs, never a Trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no GPU (install a CUDA build of torch)")
    return setting


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0))}


def predict(model_dir: Path | str, texts: Sequence[str], *, max_length: int, batch_size: int = 64,
            device: str = "auto", progress: Callable[[int, int], None] | None = None) -> tuple[list[str], np.ndarray]:
    """Labels and class probabilities for `texts`, batched, shortest-first so padding stays small, on `device`
    (auto: the GPU when there is one); `progress(done, total)` after every batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    device = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    net = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    probs = np.zeros((len(texts), net.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt").to(device)
            probs[idx] = torch.softmax(net(**enc).logits.float(), dim=-1).cpu().numpy()
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    id2label = net.config.id2label
    return [id2label[int(i)] for i in probs.argmax(axis=1)], probs
