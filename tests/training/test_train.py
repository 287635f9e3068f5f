"""Fine-tuning with the Trainer on real rows: per-epoch metrics, safetensors output, resume, prediction."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaizen.tasks.model.predict import pick_device, predict
from kaizen.tasks.training.train import fine_tune, resolve_backbone
from tests.support.files import sample
from tests.support.training import LABELS, MODEL, TRAIN


@pytest.fixture(scope="module")
def movie_rows(domains):
    rows = sample(domains["movies"], 240, seed=1)
    return rows.iloc[:200], rows.iloc[200:]


@pytest.mark.parametrize("processes", [1, 2])
def test_fine_tune_logs_each_epoch_and_saves_safetensors(tiny_backbone: Path, movie_rows, tmp_path: Path,
                                                         processes: int) -> None:
    """In a job of its own; with two processes (DDP over gloo on the CPU) the model passes the same checks."""
    train, val = movie_rows
    logged: list[tuple[int, dict]] = []
    settings = TRAIN.model_copy(update={"processes": processes})
    result = fine_tune(str(tiny_backbone), train, val, LABELS, model=MODEL, train_settings=settings, epochs=2,
                       out_dir=tmp_path, log_epoch=lambda e, m: logged.append((e, m)))
    log = (tmp_path / "job" / "train.log").read_text()
    assert [f"rank {r} of {processes} processes on cpu" in log for r in range(processes + 1)] == [True] * processes + [False]
    assert [e for e, _ in logged] == [1, 2]
    assert all({"loss", "accuracy", "f1", "train_loss"} <= set(m) for _, m in logged)
    assert result.train_rows == 200 and result.device == "cpu" and result.seconds > 0
    files = {p.name for p in result.model_dir.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]

    labels, probs = predict(result.model_dir, val["text"].tolist(), max_length=32)
    assert len(labels) == len(val) and set(labels) <= set(LABELS)
    assert probs.shape == (len(val), 2)
    assert abs(probs.sum(axis=1) - 1).max() < 1e-5


def test_training_resumes_from_its_last_checkpoint(tiny_backbone: Path, movie_rows, tmp_path: Path) -> None:
    train, val = movie_rows
    fine_tune(str(tiny_backbone), train, val, LABELS, model=MODEL, train_settings=TRAIN, epochs=1, out_dir=tmp_path)
    # The same output folder asked for two epochs: the first is taken from the checkpoint, only one runs.
    logged: list[int] = []
    fine_tune(str(tiny_backbone), train, val, LABELS, model=MODEL, train_settings=TRAIN, epochs=2,
              out_dir=tmp_path, log_epoch=lambda e, m: logged.append(e))
    assert logged == [2]


def test_empty_training_data_is_a_clear_error(tiny_backbone: Path, movie_rows, tmp_path: Path) -> None:
    _, val = movie_rows
    with pytest.raises(ValueError, match="nothing to train on"):
        fine_tune(str(tiny_backbone), val.iloc[:0], val, LABELS, model=MODEL, train_settings=TRAIN, epochs=1,
                  out_dir=tmp_path)


def test_backbone_and_device_resolution() -> None:
    assert (Path(resolve_backbone("minilm")) / "model.safetensors").exists()
    assert resolve_backbone("some-org/some-model") == "some-org/some-model"
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda")


def test_distillation_keeps_the_student_near_its_teacher(tiny_backbone: Path, movie_rows, tmp_path: Path) -> None:
    """With the whole loss spent on matching a teacher that says 'negative' to everything, the student does too,
    whatever the labels say; without it, it does not."""
    import numpy as np

    train, val = movie_rows
    teacher = np.tile(np.array([[4.0, -4.0]]), (len(train), 1))
    strong = TRAIN.model_copy(update={"distill_weight": 0.99, "learning_rate": 5e-3, "epochs": 3})
    result = fine_tune(str(tiny_backbone), train, val, LABELS, model=MODEL, train_settings=strong, epochs=3,
                       out_dir=tmp_path / "kd", teacher_logits=teacher)
    labels, _ = predict(result.model_dir, val["text"].tolist(), max_length=32)
    assert labels.count("negative") == len(labels)


def test_balanced_weights_make_every_label_weigh_the_same() -> None:
    import pandas as pd

    from kaizen.tasks.training.train import balanced_weights

    labels = pd.Series(["negative"] * 8 + ["positive"] * 2)
    weights = balanced_weights(labels, LABELS)
    assert weights == pytest.approx([10 / 16, 10 / 4])
    assert weights[0] * 8 == pytest.approx(weights[1] * 2)  # each label's rows carry the same total weight
    assert balanced_weights(pd.Series(["positive"] * 3), LABELS) == [1.0, 1.0]  # a label with no rows: no weight to set


def test_the_job_loss_weighs_each_row_by_its_label(tiny_backbone: Path) -> None:
    import torch
    import torch.nn.functional as F

    from kaizen.tasks.training.train_job import distilling_trainer, load_for_training

    net, tokenizer = load_for_training(str(tiny_backbone), LABELS)
    net.eval()  # no dropout: the same logits in every call below
    inputs = dict(tokenizer(["good", "bad", "fine", "awful"], return_tensors="pt", padding=True))
    labels = torch.tensor([1, 0, 1, 0])
    with torch.no_grad():
        logits = net(**inputs).logits
        weighted = distilling_trainer(0.0, 2.0, [1.0, 3.0]).compute_loss(None, net, {**inputs, "labels": labels})
        plain = distilling_trainer(0.0, 2.0).compute_loss(None, net, {**inputs, "labels": labels})
    assert float(weighted) == pytest.approx(float(F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 3.0]))))
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert float(weighted) != pytest.approx(float(plain))
