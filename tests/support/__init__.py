"""What the tests share, each piece once (fixtures live in tests/conftest.py):

- processes: free ports, a process group started with its log and stopped by its group (never by name),
  waiting until something holds (naming a process that died first, with its log's tail), the `kaizen` CLI in a
  subprocess with an environment of its own, variables set in this process's environment for a while.
- services: real servers on loopback, each in its own process group: PostgreSQL, an S3-compatible object store
  (SeaweedFS), an MLflow tracking server; whether a URL answers; the Prefect client helpers of the tests that
  drive a Prefect server.
- workspaces: where the repository is, the fast settings of the tiny model (FAST), the gate wide open
  (OPEN_GATE), writing params.yaml, a new workspace whose SQLite tracking store starts as a copy of one MLflow
  migrated (new_workspace; start_mlflow does the same for a new SQLite store), a workspace for the server tests,
  clearing MLflow's retry settings.
- files: label-balanced samples of the real data, landing a file (a DataFrame or bytes) in a landing zone or a
  folder, the bytes of CSV, JSON Lines and Parquet files, the quarantine records of a landed file, a folder's digests.
- training: the tiny model's settings and labels for fine-tuning without a workspace.
"""
