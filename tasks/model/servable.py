"""servable: how a fine-tuned model is logged so that MLflow serves it exactly as kaizen predicts.

Each version is a pyfunc model (tasks/model/served_model.py, models-from-code: no pickle) that carries everything it
needs to answer like `kaizen predict`: the weights (safetensors) and tokenizer, kaizen's prediction code
(`code_paths`: tasks/model/predict.py and tasks/formats/text.py), the `max_length` and normalisation it was trained with
(`model_config`), a signature, an input example and exactly pinned requirements. `mlflow models serve`,
`mlflow models build-docker` and kaizen itself (tasks/serving/champion.py) load it the same way and so run one code
path: predict.classify.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

TEXT = "text"  # the served model's input column, whatever a workspace's files call theirs
# What the served model imports, pinned to the versions it was trained and checked with.
SERVED_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas")
SHIPPED_CODE = ("formats/text.py", "model/predict.py")  # kaizen's prediction code (under tasks/), in every model
EXAMPLE = ["A wonderful, moving film.", "It stopped working after two days."]


def pinned_requirements() -> list[str]:
    """`name==version` of each package the served model imports, as installed here. A local build label (torch's
    `+cpu`) is dropped: indexes publish the release, and a GPU host installs its own build of that release."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in SERVED_PACKAGES]


def model_config(settings, labels) -> dict[str, Any]:
    """What the served model needs to know of training: truncation, normalisation, batching, its labels (the
    model's own, in class-id order: a version keeps them when `data.labels` grows later)."""
    return {"text_column": TEXT, "max_length": settings.model.max_length, "lowercase": settings.preprocess.lowercase,
            "batch_size": settings.serving.batch_size, "device": "auto", "labels": list(labels)}


def signature(labels):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "prediction", required=False),
               *[ColSpec("double", f"p_{label}", required=False) for label in labels],
               ColSpec("string", "reason", required=False)]
    return ModelSignature(inputs=Schema([ColSpec("string", TEXT)]), outputs=Schema(outputs))


def _stage_code(folder: Path) -> Path:
    """kaizen's prediction code as a package of its own (`kaizen.tasks.model.predict`, `kaizen.tasks.formats.text`) for
    `code_paths`: a serving environment without kaizen installed imports it from the model."""
    package = folder / "kaizen"
    tasks = Path(__file__).resolve().parent.parent
    package.mkdir()
    (package / "__init__.py").write_text('"""kaizen\'s prediction code, shipped inside a logged model."""\n')
    for name in SHIPPED_CODE:
        target = package / "tasks" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tasks / name, target)
        for folder in (package / "tasks", target.parent):
            (folder / "__init__.py").touch()
    return package


def log_classifier(model_dir: Path, settings):
    """Log the fine-tuned model folder to the active MLflow run as the pyfunc model `model`; its ModelInfo. Its
    signature lists the model's own labels (its config's), which are the settings' only until they grow."""
    import mlflow
    import pandas as pd

    from kaizen.tasks.model.predict import model_labels

    labels = model_labels(model_dir)

    with tempfile.TemporaryDirectory(prefix="kaizen-code-") as scratch:
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("served_model.py")),
            artifacts={"weights": str(model_dir)}, code_paths=[str(_stage_code(Path(scratch)))],
            model_config=model_config(settings, labels), signature=signature(labels),
            input_example=pd.DataFrame({TEXT: EXAMPLE}), pip_requirements=pinned_requirements(),
        )
