"""The watch on captured traffic as a Prefect flow: the third deployment of a workspace (flows/deployment.py), on
the cron of `watch.cron`. The work is tasks/serving/watch.py's, as under `kaizen watch-traffic`; drift shown is
announced (`kaizen.traffic.drifted`, tasks/notify/alerts.py) and every run shows a markdown artifact.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from kaizen.flows.loop import step
from kaizen.tasks.notify import alerts
from kaizen.tasks.runtime import callers
from kaizen.tasks.serving import watch as watching
from kaizen.tasks.serving.watch import TrafficDrift
from kaizen.tasks.workspace.members import open_member

watch_traffic = step(watching.watch_traffic)  # tasks as the loop's steps are: no retries, no cache
announce_traffic = step(alerts.announce_traffic)


@flow(name="kaizen-watch", log_prints=True)
def watch(workspace: str = ".", join: str | None = None) -> dict:
    """Check the traffic captured since the last watch for drift from the champion's data, and tell people when
    it is shown. `join`: as for the loop's runs (flows/loop.py)."""
    callers.deployed(watch, workspace=workspace, join=join)  # a deployed run works where it was deployed
    ws = open_member(workspace, join)
    found = watch_traffic(ws)
    announce_traffic(ws, found)
    create_markdown_artifact(key="kaizen-watch", markdown=markdown(found),
                             description=f"kaizen watch of the traffic since {found.since:%Y-%m-%d %H:%M} UTC")
    print(found.describe())
    return found.as_dict()


def markdown(found: TrafficDrift) -> str:
    rows = "".join(f"| {name} | {score:.4f} | {'yes' if name in found.drifted_columns else 'no'} |\n"
                   for name, score in found.columns.items())
    table = f"\n| column | score | drifted |\n|---|---|---|\n{rows}" if rows else ""
    notes = "".join(f"- {note}\n" for note in found.notes)
    return f"# kaizen watch\n\n{found.describe()}\n{table}" + (f"\n## Not checked\n{notes}" if notes else "")
