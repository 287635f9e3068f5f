"""The champion as MLflow serves it, and batch scoring (`kaizen score`, `kaizen predict FILE`)."""
