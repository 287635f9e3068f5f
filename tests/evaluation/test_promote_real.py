"""The gate and the label check on real data with the real MiniLM: a genuinely new domain is promoted; a batch
with flipped labels and a batch of random labels are held back as suspect before any training; and were the
label check switched off, the gate would still refuse the flipped batch for the forgetting it causes."""

from __future__ import annotations

import numpy as np
import pytest

from kaizen.flows.loop import iteration
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.tags import TAG
from tests.support.files import land, sample
from tests.support.workspaces import write_params

pytestmark = pytest.mark.slow

FLIP = {"positive": "negative", "negative": "positive"}


def test_new_domain_promoted_flipped_and_random_labels_never(tmp_path, domains, prefect_server) -> None:
    from kaizen.tasks.workspace.layout import Workspace
    from tests.support.workspaces import new_workspace

    root = tmp_path / "ws"
    new_workspace(root)
    write_params(root, {"model.max_length": 48, "train.learning_rate": 1e-4, "train.bootstrap_epochs": 4,
                        "preprocess.test_fraction": 0.3, "preprocess.val_fraction": 0.1,
                        "replay.ratio": 1.0, "data.min_batch_rows": 50})
    ws = Workspace.open(root)
    movies = sample(domains["movies"], 1050, seed=21)
    amazon = sample(domains["amazon"], 700, seed=22)

    def run(name, frame):
        land(ws, name, frame)
        return iteration(str(root))

    bootstrap = run("movies.csv", movies.iloc[:350])
    assert bootstrap["decision"] == "promoted", bootstrap["reasons"]

    new_domain = run("amazon.csv", amazon.iloc[:350])
    assert new_domain["decision"] == "promoted", new_domain["reasons"]

    flipped = run("movies-flipped.csv", movies.iloc[350:700].assign(label=lambda f: f["label"].map(FLIP)))
    assert flipped["decision"] == "suspect" and "kappa" in flipped["reasons"][0], flipped["reasons"]

    noise = amazon.iloc[350:].copy()
    noise["label"] = np.random.default_rng(0).choice(["negative", "positive"], size=len(noise))
    random_labels = run("amazon-random.csv", noise)
    assert random_labels["decision"] == "suspect", random_labels["reasons"]

    # The label check off: the flipped labels are trained on, and still never promoted: the merge keeps what
    # the movies taught (the flipped labels then score below min_score, or show a loss) or the gate sees the
    # movies forgotten.
    write_params(root, {"trust.min_kappa": -1.0, "trust.max_confident_issues": 1.0})
    unchecked = run("movies-flipped-again.csv", movies.iloc[700:].assign(label=lambda f: f["label"].map(FLIP)))
    assert unchecked["decision"] == "rejected", unchecked["reasons"]
    reasons = unchecked["reasons"]
    assert any("below min_score" in r for r in reasons) or any(
        ("earlier batch-0001" in r or "new batch batch-0005" in r) and " is shown " in r for r in reasons), reasons

    client = tracking.connect(ws)
    name = ws.settings.model.registered_name
    assert tracking.model_by_alias(client, name, tracking.CHAMPION).version == "2"
    assert [v.tags[TAG["batch"]] for v in client.search_model_versions(f"name='{name}'",
                                                                       order_by=["version_number"])] == [
        "batch-0001", "batch-0002", "batch-0005"]  # no model was trained on the suspect batches
    tags = tracking.model_version(client, name, "3").tags
    assert tags[TAG["decision"]] == "rejected" and tags[TAG["reasons"]]
