"""merge: WiSE-FT weight interpolation between a fine-tuned model and its champion, and the choice of the mix
on validation splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kaizen.tasks.model.predict import predict
from kaizen.tasks.training.merge import WEIGHTS, MergeChoice, choose_merge, interpolate
from kaizen.tasks.training.train import fine_tune
from tests.support.files import sample
from tests.support.training import LABELS, MODEL


@pytest.fixture(scope="module")
def two_models(tiny_backbone: Path, domains, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A champion fine-tuned on movie reviews, and that champion fine-tuned further on Amazon reviews."""
    from kaizen.tasks.workspace.members import template
    from kaizen.tasks.workspace.settings import load_settings

    train = load_settings(template("params.yaml")).train.model_copy(update={"learning_rate": 2e-3, "batch_size": 16})
    out = tmp_path_factory.mktemp("merge")
    movies, amazon = sample(domains["movies"], 240, seed=3), sample(domains["amazon"], 240, seed=4)
    champion = fine_tune(str(tiny_backbone), movies.iloc[:160], movies.iloc[160:200], LABELS, model=MODEL,
                         train_settings=train, epochs=3, out_dir=out / "champion").model_dir
    tuned = fine_tune(str(champion), amazon.iloc[:160], amazon.iloc[160:200], LABELS, model=MODEL,
                      train_settings=train, epochs=3, out_dir=out / "tuned").model_dir
    return champion, tuned, {"movies": movies.iloc[200:], "amazon": amazon.iloc[200:]}


def test_interpolation_is_exact_at_the_ends_and_linear_between(two_models, tmp_path: Path) -> None:
    champion, tuned, _ = two_models
    old, new = load_file(str(champion / WEIGHTS)), load_file(str(tuned / WEIGHTS))
    changed = next(k for k in new if new[k].is_floating_point() and not torch.equal(new[k], old[k]))
    for alpha in (0.0, 0.3, 1.0):
        merged = load_file(str(interpolate(champion, tuned, alpha, tmp_path / f"a{alpha}") / WEIGHTS))
        assert merged.keys() == new.keys()
        torch.testing.assert_close(merged[changed], old[changed] + alpha * (new[changed] - old[changed]))
    assert (tmp_path / "a0.3" / "config.json").exists() and (tmp_path / "a0.3" / "tokenizer.json").exists()


def test_models_of_another_shape_are_not_merged(two_models, tiny_backbone: Path, tmp_path: Path) -> None:
    champion, _, _ = two_models
    with pytest.raises(ValueError, match="differ in names or shapes"):
        interpolate(champion, tiny_backbone, 0.5, tmp_path / "x")  # the backbone has no classification head


def test_the_mix_with_the_best_mean_validation_accuracy_is_kept(two_models, tmp_path: Path) -> None:
    champion, tuned, val = two_models
    choice = choose_merge(champion, tuned, val, "amazon", (0.25, 0.5, 1.0), max_length=32, out_dir=tmp_path)
    assert set(choice.scores) == {0.25, 0.5, 1.0} and set(choice.scores[0.5]) == {"movies", "amazon"}
    assert choice.objective(choice.alpha) == max(choice.objective(a) for a in choice.scores)
    assert choice.objective(0.5) == (choice.scores[0.5]["amazon"] + choice.scores[0.5]["movies"]) / 2
    for batch, rows in val.items():  # each batch's score is of its own rows, though all are scored in one pass
        predicted, _ = predict(tuned, rows["text"].tolist(), max_length=32)
        assert choice.scores[1.0][batch] == pytest.approx(np.mean(np.asarray(predicted) == rows["label"].to_numpy()))
    assert choice.model_dir.exists()
    kept = [p.name for p in tmp_path.iterdir()]
    assert kept == ([] if choice.alpha == 1.0 else [f"alpha-{choice.alpha:g}"])  # the other candidates are gone
    with pytest.raises(ValueError, match="no mixing coefficients"):
        choose_merge(champion, tuned, val, "amazon", (), max_length=32, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no validation rows of the new batch"):
        choose_merge(champion, tuned, {"movies": val["movies"]}, "amazon", (0.5,), max_length=32, out_dir=tmp_path)


def test_learning_and_keeping_weigh_the_same_however_long_the_history(tmp_path: Path) -> None:
    scores = {0.5: {"new": 0.70, **{f"old{i}": 0.90 for i in range(9)}},
              1.0: {"new": 0.90, **{f"old{i}": 0.86 for i in range(9)}}}
    choice = MergeChoice(1.0, tmp_path, scores, "new")
    assert choice.objective(1.0) > choice.objective(0.5)  # +0.20 learned outweighs -0.04 kept
