"""head: a label set that grows. The champion's head is extended with its classes kept; any other change of the
label set is refused, naming both lists, and never turns into a silent new head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kaizen.tasks.model.predict import model_labels
from kaizen.tasks.training.head import (
    WEIGHTS,
    LabelSetError,
    extend_head,
    new_label_rows,
    own_labels,
    start_with_labels,
)
from kaizen.tasks.training.merge import interpolate
from kaizen.tasks.training.train_job import distilling_trainer, load_for_training
from tests.support.training import LABELS
from tests.support.training import two_label_model as make_two_label_model

GROWN = (*LABELS, "neutral")
TEXTS = ["a wonderful, moving film", "it broke after two days", "the flight was on time", "meh"]


@pytest.fixture(scope="module")
def two_label_model(tiny_backbone: Path, tmp_path_factory) -> Path:
    return make_two_label_model(tiny_backbone, tmp_path_factory.mktemp("two-labels"))


def logits(model_dir: Path) -> torch.Tensor:
    net, tokenizer = load_for_training(str(model_dir), model_labels(model_dir))
    with torch.no_grad():
        return net.eval()(**tokenizer(TEXTS, return_tensors="pt", padding=True)).logits


def test_an_extended_head_keeps_the_old_classes_logits(two_label_model: Path, tmp_path: Path) -> None:
    grown = extend_head(two_label_model, GROWN, tmp_path / "grown", seed=3)
    assert model_labels(grown) == list(GROWN) and own_labels(grown) == list(GROWN)
    old, new = logits(two_label_model), logits(grown)
    assert new.shape == (len(TEXTS), 3)
    # The same weights and inputs, one more output row (equal here; a BLAS may sum in another order elsewhere)
    torch.testing.assert_close(new[:, :2], old, rtol=0, atol=1e-6)
    before, after = load_file(str(two_label_model / WEIGHTS)), load_file(str(grown / WEIGHTS))
    assert torch.equal(after["classifier.weight"][:2], before["classifier.weight"])
    assert torch.equal(after["classifier.bias"][:2], before["classifier.bias"])
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("classifier."))
    new_row = after["classifier.weight"][2]
    assert 0 < float(new_row.std()) < 0.1  # initialised as transformers initialises a head: small and random
    again = load_file(str(extend_head(two_label_model, GROWN, tmp_path / "again", seed=3) / WEIGHTS))
    assert torch.equal(again["classifier.weight"], after["classifier.weight"])  # seeded: a retry starts the same
    assert (grown / "tokenizer.json").exists()


def test_a_merge_takes_a_grown_heads_new_rows_from_the_fine_tuned_model_alone(two_label_model: Path,
                                                                             tmp_path: Path) -> None:
    """The new label's row of a grown start is a random initialisation: mixing it back into the fine-tuned row
    (WiSE-FT) shrank what the fine-tune learned of the new label, which then was never the answer."""
    import shutil

    from safetensors.torch import save_file

    grown = extend_head(two_label_model, GROWN, tmp_path / "grown", seed=3)
    rows = new_label_rows(two_label_model, grown)
    assert rows == {"classifier.weight": 2, "classifier.bias": 2} and new_label_rows(grown, grown) == {}
    start = load_file(str(grown / WEIGHTS))
    tuned = {k: v + 1.0 if v.is_floating_point() else v for k, v in start.items()}  # every weight moved
    shutil.copytree(grown, tmp_path / "tuned", ignore=shutil.ignore_patterns(WEIGHTS))
    save_file(tuned, str(tmp_path / "tuned" / WEIGHTS), metadata={"format": "pt"})
    merged = load_file(str(interpolate(grown, tmp_path / "tuned", 0.25, tmp_path / "merged", rows) / WEIGHTS))
    for name in rows:
        assert torch.equal(merged[name][2:], tuned[name][2:])  # the new label's row: as fine-tuned
        torch.testing.assert_close(merged[name][:2], start[name][:2] + 0.25)  # the champion's classes: mixed
    other = next(k for k, v in start.items() if k not in rows and v.is_floating_point())
    torch.testing.assert_close(merged[other], start[other] + 0.25)


@pytest.mark.parametrize("labels", [("positive", "negative", "neutral"), ("negative", "neutral"),
                                    ("negative", "good", "neutral")], ids=["reordered", "removed", "renamed"])
def test_a_label_removed_renamed_or_reordered_is_refused_naming_both_lists(two_label_model: Path, tmp_path: Path,
                                                                         labels: tuple[str, ...]) -> None:
    wanted, known = str(list(labels)), str(list(LABELS))
    with pytest.raises(LabelSetError, match="removed, renamed or reordered") as refused:
        start_with_labels(two_label_model, labels, tmp_path, seed=3, model="the champion v1")
    assert wanted in str(refused.value) and known in str(refused.value) and "the champion v1" in str(refused.value)
    with pytest.raises(LabelSetError) as in_the_job:  # the training job itself never makes a new head silently
        load_for_training(str(two_label_model), labels)
    assert wanted in str(in_the_job.value) and known in str(in_the_job.value)
    assert not list(tmp_path.iterdir())


def test_appended_labels_are_never_a_silent_new_head(two_label_model: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelSetError, match="grown"):
        load_for_training(str(two_label_model), GROWN)  # not grown first: refused, not a random head
    net, _ = load_for_training(str(two_label_model), GROWN, new_head=True)  # a bootstrap asks for one
    assert net.config.num_labels == 3
    assert start_with_labels(two_label_model, LABELS, tmp_path, seed=3, model="v1") == two_label_model
    grown = start_with_labels(two_label_model, GROWN, tmp_path, seed=3, model="v1")
    assert grown.parent == tmp_path and model_labels(grown) == list(GROWN)
    assert start_with_labels(two_label_model, GROWN, tmp_path, seed=3, model="v1") == grown  # built once


def test_distillation_of_a_grown_student_is_over_the_teachers_classes(two_label_model: Path, tmp_path: Path) -> None:
    import torch.nn.functional as F

    grown = extend_head(two_label_model, GROWN, tmp_path / "grown", seed=3)
    net, tokenizer = load_for_training(str(grown), GROWN)
    inputs = dict(tokenizer(TEXTS, return_tensors="pt", padding=True))
    labels, teacher = torch.tensor([1, 0, 2, 2]), torch.randn(len(TEXTS), 2)
    with torch.no_grad():
        student = net.eval()(**inputs).logits
        loss = distilling_trainer(0.5, 2.0).compute_loss(None, net, {**inputs, "labels": labels, "teacher_logits": teacher})
    kd = F.kl_div(F.log_softmax(student[:, :2] / 2.0, dim=-1), F.softmax(teacher / 2.0, dim=-1),
                  reduction="batchmean") * 4.0
    assert float(loss) == pytest.approx(float(0.5 * F.cross_entropy(student, labels) + 0.5 * kd), rel=1e-5)
