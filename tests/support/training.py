"""Fine-tuning without a workspace: the tiny model's settings and its labels, for the tests of training, merging
and training jobs."""

from __future__ import annotations

from kaizen.tasks.workspace.settings import ModelSettings, TrainSettings

LABELS = ("negative", "positive")
MODEL = ModelSettings(registered_name="m", backbone="tiny", max_length=32)
TRAIN = TrainSettings(epochs=2, bootstrap_epochs=2, batch_size=16, learning_rate=2e-3, weight_decay=0.0,
                      warmup_ratio=0.0, max_train_rows=0, seed=3, device="cpu", processes=1, deployment="",
                      balance_classes="never", distill_weight=0.0, distill_temperature=2.0,
                      skip_if_champion_above=1.01, merge_alphas=(1.0,), merge_val_rows=100)
