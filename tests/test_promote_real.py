"""The gate holds on real data with the real MiniLM: a genuinely new domain is promoted; a batch with flipped
labels and a batch of random labels are both refused, with the reason recorded."""

from __future__ import annotations

import numpy as np
import pytest

from kaizen.flows.loop import iteration
from kaizen.tasks import registry
from kaizen.tasks.record import TAG
from tests.helpers import sample, write_params

pytestmark = pytest.mark.slow


def test_new_domain_promoted_flipped_and_random_labels_refused(tmp_path, domains, prefect_server) -> None:
    from kaizen.tasks.workspace import Workspace, init_workspace

    root = tmp_path / "ws"
    init_workspace(root)
    write_params(root, {"model.max_length": 48, "train.learning_rate": 1e-4, "train.bootstrap_epochs": 2,
                        "preprocess.test_fraction": 0.3, "preprocess.val_fraction": 0.1,
                        "replay.ratio": 1.0, "gate.max_regression": 0.05, "data.min_batch_rows": 50})
    ws = Workspace.open(root)
    landing = ws.root / "data" / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    movies = sample(domains["movies"], 700, seed=21)
    amazon = sample(domains["amazon"], 700, seed=22)

    def run(name, frame):
        frame.to_csv(landing / name, index=False)
        return iteration(str(root))

    bootstrap = run("movies.csv", movies.iloc[:350])
    assert bootstrap["decision"] == "promoted", bootstrap["reasons"]

    new_domain = run("amazon.csv", amazon.iloc[:350])
    assert new_domain["decision"] == "promoted", new_domain["reasons"]

    flipped = movies.iloc[350:].copy()
    flipped["label"] = flipped["label"].map({"positive": "negative", "negative": "positive"})
    refused = run("movies-flipped.csv", flipped)
    assert refused["decision"] == "rejected"
    assert any("earlier batch-0001" in r and "max_regression" in r for r in refused["reasons"][:2]), refused

    noise = amazon.iloc[350:].copy()
    noise["label"] = np.random.default_rng(0).choice(["negative", "positive"], size=len(noise))
    random_labels = run("amazon-random.csv", noise)
    assert random_labels["decision"] == "rejected"

    client = registry.connect(ws)
    name = ws.settings.model.registered_name
    assert registry.model_by_alias(client, name, registry.CHAMPION).version == "2"
    for version in ("3", "4"):
        tags = registry.model_version(client, name, version).tags
        assert tags[TAG["decision"]] == "rejected" and tags[TAG["reasons"]]
