"""Choosing texts to label as a Prefect flow (`kaizen-select`), run from the Prefect UI or API with a `budget`
(`prefect deployment run 'kaizen-select/<workspace>' -p budget=200`: flows/deployment.py registers it) or as
`kaizen select`'s work. The choice is tasks/serving/selection.py's; the run shows where the queue went and why in
a markdown artifact.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from kaizen.tasks.runtime import callers
from kaizen.tasks.serving import selection
from kaizen.tasks.serving.labeling_queue import LabelingQueue
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import open_member


@task(name="select_for_labeling", cache_policy=NO_CACHE)
def select_for_labeling(ws: Workspace, budget: int, since: datetime | None) -> LabelingQueue:
    return selection.select_for_labeling(ws, budget, since=since)


@flow(name="kaizen-select", log_prints=True)
def select(budget: int, since: str | None = None, workspace: str = ".", join: str | None = None) -> dict:
    """Queue up to `budget` captured texts for labeling (answered since `since`: an age such as 7d, or an ISO
    time). `join`: as for the loop's runs (flows/loop.py), a worker's empty folder joins the shared loop first."""
    callers.deployed(select, workspace=workspace, join=join)
    ws = open_member(workspace, join)
    queue = select_for_labeling(ws, budget, selection.parse_since(since, datetime.now(UTC)))
    files = "".join(f"- `{path}`\n" for path in queue.files)
    create_markdown_artifact(key="kaizen-labeling-queue", description=f"kaizen: {queue.rows} texts to label",
                             markdown=f"# kaizen labeling queue\n\n{queue.describe()}\n\n{files}")
    print(queue.describe())
    return queue.as_dict()
