"""MLflow: model versions and aliases, the record of an iteration, every tag and decision, lineage."""
