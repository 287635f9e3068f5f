"""The champion as MLflow serves it: a pyfunc model logged as code (MLflow's models-from-code, no pickle).

tasks/model/servable.py logs this file with the fine-tuned weights as the artifact `weights`, kaizen's prediction code
(tasks/model/predict.py, tasks/formats/text.py) as `code_paths`, and the settings it was trained with as `model_config`. MLflow
runs the file wherever the model is loaded (`mlflow models serve`, a Docker image, `mlflow.pyfunc.load_model`),
so it needs nothing of kaizen's installed. Never imported by kaizen itself: it registers the model on import.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TextClassifier(PythonModel):
    """Texts in (a `text` column, a list or one string); `prediction`, `p_<label>` and `reason` out."""

    def load_context(self, context) -> None:
        from kaizen.tasks.model.predict import load, pick_device

        self.config = dict(context.model_config)
        self.device = pick_device(self.config["device"])
        self.tokenizer, self.net = load(context.artifacts["weights"], self.device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # The DataFrame hint: MLflow validates the input against the logged signature, not a hint-derived one.
        from kaizen.tasks.model.predict import classify

        if isinstance(model_input, pd.DataFrame):
            column: str = self.config["text_column"]
            texts = model_input[column].tolist()
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = list(model_input)
        return classify(self.tokenizer, self.net, texts, max_length=int(self.config["max_length"]),
                        lowercase=bool(self.config["lowercase"]), batch_size=int(self.config["batch_size"]))


mlflow.models.set_model(TextClassifier())
