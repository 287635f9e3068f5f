"""A model folder: the one prediction path, and how a version is logged so that MLflow serves it the same way."""
