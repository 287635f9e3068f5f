"""merge: weight-space ensembling of a fine-tuned model with the champion it started from (WiSE-FT,
Wortsman et al. 2022, arXiv 2109.01903).

Fine-tuning on a new domain moves the weights away from what served the earlier ones; interpolating between the
champion's weights and the fine-tuned ones keeps most of the new skill and much of the old. The mixing
coefficient is chosen on the validation splits of the new batch and of every trusted earlier batch, never on
the test splits the gate judges with, and every candidate's scores are kept for the record.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kaizen.tasks.model.predict import predict

WEIGHTS = "model.safetensors"


def interpolate(champion_dir: Path, tuned_dir: Path, alpha: float, out_dir: Path,
                tuned_rows: Mapping[str, int] | None = None) -> Path:
    """(1 - alpha) * champion + alpha * tuned, for every floating-point weight; the fine-tuned model's config and
    tokenizer. alpha 1 is the fine-tuned model itself, alpha 0 the champion. `tuned_rows` (weight name -> rows):
    past that many rows the weight is the fine-tuned model's alone: a grown head's rows of labels the champion
    never had (tasks/training/head.py), whose start is a random initialisation, not something to keep."""
    from safetensors.torch import load_file, save_file

    old, new = load_file(str(Path(champion_dir) / WEIGHTS)), load_file(str(Path(tuned_dir) / WEIGHTS))
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in new):
        raise ValueError(f"cannot merge {tuned_dir} with {champion_dir}: their weights differ in names or shapes")
    merged = {k: (old[k].to(v.dtype) * (1 - alpha) + v * alpha) if v.is_floating_point() else v
              for k, v in new.items()}
    for name, rows in (tuned_rows or {}).items():
        merged[name][rows:] = new[name][rows:]
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(tuned_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS))
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    return out_dir


@dataclass(frozen=True)
class MergeChoice:
    alpha: float
    model_dir: Path
    scores: dict[float, dict[str, float]]  # alpha -> validation accuracy per batch
    new_batch: str

    def objective(self, alpha: float) -> float:
        """Half the new batch's validation accuracy, half the mean over the earlier batches': what is learned and
        what is kept weigh the same, however long the history (with a plain mean over batches, the tenth batch
        would count for a tenth and the merge would stop learning new domains)."""
        scores = self.scores[alpha]
        earlier = [v for b, v in scores.items() if b != self.new_batch]
        return float(scores[self.new_batch] if not earlier else (scores[self.new_batch] + np.mean(earlier)) / 2)


def choose_merge(champion_dir: Path, tuned_dir: Path, val_sets: dict[str, pd.DataFrame], new_batch: str,
                 alphas: tuple[float, ...], *, max_length: int, out_dir: Path, device: str = "cpu",
                 tuned_rows: Mapping[str, int] | None = None) -> MergeChoice:
    """Score each candidate mix on every validation split (`new_batch`'s among them) and keep the best (ties go
    to the larger alpha: more of the new batch learned). Candidates other than the chosen one are deleted."""
    if not alphas:
        raise ValueError("merge: no mixing coefficients to try (train.merge_alphas is empty)")
    if new_batch not in val_sets:
        raise ValueError(f"merge: no validation rows of the new batch {new_batch} to choose on")
    scores: dict[float, dict[str, float]] = {}
    dirs: dict[float, Path] = {}
    for alpha in sorted(set(alphas)):
        dirs[alpha] = tuned_dir if alpha == 1.0 else interpolate(champion_dir, tuned_dir, alpha,
                                                                  out_dir / f"alpha-{alpha:g}", tuned_rows)
        # Every batch's rows in one pass: a model load per batch made the choice grow with the history.
        predicted, _ = predict(dirs[alpha], [t for val in val_sets.values() for t in val["text"]],
                               max_length=max_length, device=device)
        ends = np.cumsum([len(val) for val in val_sets.values()])
        scores[alpha] = {batch: float(np.mean(np.asarray(predicted[end - len(val): end]) == val["label"].to_numpy()))
                         for (batch, val), end in zip(val_sets.items(), ends, strict=True)}
    choice = MergeChoice(0.0, tuned_dir, scores, new_batch)
    best = max(sorted(scores), key=lambda a: (round(choice.objective(a), 12), a))
    for alpha, folder in dirs.items():
        if alpha != best and folder != tuned_dir:
            shutil.rmtree(folder)
    return MergeChoice(best, dirs[best], scores, new_batch)
