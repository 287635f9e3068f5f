"""Fine-tuning without a workspace: the tiny model's settings and its labels, for the tests of training, merging
and training jobs."""

from __future__ import annotations

from pathlib import Path

from kaizen.tasks.workspace.settings import ModelSettings, TrainSettings

LABELS = ("negative", "positive")
MODEL = ModelSettings(registered_name="m", backbone="tiny", max_length=32)
TRAIN = TrainSettings(epochs=2, bootstrap_epochs=2, batch_size=16, learning_rate=2e-3, weight_decay=0.0,
                      warmup_ratio=0.0, max_train_rows=0, seed=3, device="cpu", processes=1, deployment="",
                      balance_classes="never", distill_weight=0.0, distill_temperature=2.0,
                      skip_if_champion_above=1.01, merge_alphas=(1.0,), merge_val_rows=100)


def two_label_model(backbone: Path, out: Path) -> Path:
    """`backbone` with a head for LABELS whose rows differ clearly from any fresh initialisation, saved in `out`:
    a champion to grow the label set from (tests of tasks/training/head.py and tasks/evaluation/grown.py)."""
    import torch

    from kaizen.tasks.training.train_job import load_for_training

    net, tokenizer = load_for_training(str(backbone), LABELS)
    with torch.no_grad():
        net.classifier.weight.copy_(torch.linspace(-1, 1, net.classifier.weight.numel()).view_as(net.classifier.weight))
        net.classifier.bias.copy_(torch.tensor([0.3, -0.2]))
    net.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
