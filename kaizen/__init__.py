"""kaizen: a continual-learning loop for transformer text classifiers.

The code lives in the repository's top-level folders `tasks/` (the steps) and `flows/` (Prefect flows and the
CLI); pyproject.toml installs them as `kaizen.tasks` and `kaizen.flows`, so nothing of kaizen's takes a
generic top-level name such as `tasks` in a user's environment. `kaizen/templates/` holds the `params.yaml`
and `dvc.yaml` that `kaizen init` writes into a new workspace (links to the repository's own).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kaizen")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
