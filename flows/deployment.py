"""The loop as a Prefect deployment: one per workspace, on the cron of params.yaml, started by every
`kaizen.data.arrived` event for the workspace, and never two runs at once.

One run at a time is the deployment's concurrency limit of 1 with the ENQUEUE strategy, enforced by the
server: a run that comes while another holds the slot is put back as `AwaitingConcurrencySlot` (Scheduled)
and asks again every `servers.slot_wait_seconds`, so an event is never dropped, only queued. The flow also
holds a file lock on the workspace (tasks.workspace.hold) for runs that bypass the deployment.

The same deployment is either served by `kaizen serve` (runs start as child processes of that command) or
registered on a work pool by `kaizen deploy --pool` (a `prefect worker start` process, Docker container or
Kubernetes job starts them; see infra/).

Beside it, each workspace gets a second deployment, `kaizen-score/<workspace>` (flows/scoring.py: batch scoring
with the champion, on demand), a third, `kaizen-watch/<workspace>` (flows/watch.py: drift of the captured traffic,
on the cron of `watch.cron`), a fourth, `kaizen-select/<workspace>` (flows/select.py: a labeling queue of a given
`budget`, on demand), and the alert automations of tasks/notify/alerts.py (when `alerts.webhook_url` is set).

The parameters `run_parameters` gives a deployment fix where its runs work: whoever starts a run through the
Prefect API may give it parameters, but a run asking for another `workspace` or `join` than its deployment's is
refused (tasks/runtime/callers.py).
"""

from __future__ import annotations

from collections.abc import Callable

from kaizen.tasks.notify import alerts, arrivals
from kaizen.tasks.runtime import zombies
from kaizen.tasks.workspace.environment import child_environment
from kaizen.tasks.workspace.layout import Workspace, hold

FLOW_NAME = "kaizen-iteration"
SCORING_FLOW_NAME = "kaizen-score"
WATCH_FLOW_NAME = "kaizen-watch"
SELECT_FLOW_NAME = "kaizen-select"


def deployment_name(ws: Workspace) -> str:
    return ws.workspace_id


def run_parameters(ws: Workspace, on_pool: bool) -> dict[str, str]:
    """What a run is told to work in. Served here, or on a pool with a loop on one machine: this folder. A shared
    loop on a pool: a folder of the worker's own (under its KAIZEN_HOME, else its run's new working directory),
    which joins the loop from its database when empty, so any worker, on any disk, carries the loop on. Fixed for
    every run of the deployment (tasks/runtime/callers.py refuses a run that asks for others)."""
    if on_pool and ws.shared:
        return {"workspace": f"kaizen-{ws.workspace_id}", "join": str(ws.ledger_db)}
    return {"workspace": str(ws.root)}


def build(ws: Workspace, job_variables: dict | None = None, on_pool: bool = False):
    """The RunnerDeployment of this workspace's loop (not yet sent to the server)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.events import DeploymentEventTrigger

    from kaizen.flows.loop import iteration

    parameters = run_parameters(ws, on_pool)
    return iteration.to_deployment(
        name=deployment_name(ws),
        cron=ws.settings.schedule.cron,
        parameters=parameters,
        triggers=[DeploymentEventTrigger(**arrivals.trigger_spec(ws, parameters))],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        description=f"kaizen loop on {ws.root}: collect, fine-tune, check, promote",
        tags=["kaizen", f"workspace:{ws.workspace_id}"],
        job_variables=job_variables,
        # Imported by module path: the run's process finds the flow wherever its working directory is.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def build_scoring(ws: Workspace, job_variables: dict | None = None, on_pool: bool = False):
    """The RunnerDeployment of this workspace's batch scoring (flows/scoring.py): no schedule, run on demand."""
    from prefect.deployments.runner import EntrypointType

    from kaizen.flows.scoring import score

    return score.to_deployment(
        name=deployment_name(ws), parameters=run_parameters(ws, on_pool), job_variables=job_variables,
        description=f"kaizen batch scoring with the champion of {ws.root}: give `source` and `out`",
        tags=["kaizen", f"workspace:{ws.workspace_id}"], entrypoint_type=EntrypointType.MODULE_PATH)


def build_watch(ws: Workspace, job_variables: dict | None = None, on_pool: bool = False):
    """The RunnerDeployment of this workspace's watch on captured traffic (flows/watch.py), on `watch.cron`. No
    concurrency limit: a watch killed with its process would hold the slot for good, and two at once only read
    one window twice."""
    from prefect.deployments.runner import EntrypointType

    from kaizen.flows.watch import watch

    return watch.to_deployment(
        name=deployment_name(ws), cron=ws.settings.watch.cron, parameters=run_parameters(ws, on_pool),
        job_variables=job_variables, description=f"kaizen watch of the traffic captured by {ws.root}: drift "
        "from the champion's data", tags=["kaizen", f"workspace:{ws.workspace_id}"],
        entrypoint_type=EntrypointType.MODULE_PATH)


def build_select(ws: Workspace, job_variables: dict | None = None, on_pool: bool = False):
    """The RunnerDeployment of this workspace's choice of texts to label (flows/select.py): no schedule, run on
    demand with a `budget` (a labeler's capacity is a person's call, not a cron's)."""
    from prefect.deployments.runner import EntrypointType

    from kaizen.flows.select import select

    return select.to_deployment(
        name=deployment_name(ws), parameters=run_parameters(ws, on_pool), job_variables=job_variables,
        description=f"kaizen: queue the texts captured by {ws.root} most worth labeling: give `budget`",
        tags=["kaizen", f"workspace:{ws.workspace_id}"], entrypoint_type=EntrypointType.MODULE_PATH)


def serve(ws: Workspace, on_alerts: Callable[[list[str]], None] | None = None) -> list[str]:
    """Register the four deployments and the alert automations (their names go to `on_alerts`), and run the
    deployments from this process until interrupted (Ctrl-C pauses them). A second `kaizen serve` of the
    workspace is refused: stopping either would pause the deployments under the other. Before serving, runs a
    killed earlier `kaizen serve` left Running are marked Crashed (tasks/runtime/zombies.py)."""
    from prefect import serve as prefect_serve

    with hold(ws, "serve", wait=False):
        names = alerts.ensure_automations(ws)
        if on_alerts:
            on_alerts(names)
        # The others first: once the loop's deployment exists, whoever waits for it (a test, an operator's script)
        # finds the other three as well, rather than racing prefect's serve, which applies all again.
        build_scoring(ws).apply()
        build_watch(ws).apply()
        build_select(ws).apply()
        zombies.ensure_automation(ws, build(ws).apply())
        crashed = zombies.reconcile(ws, f"{FLOW_NAME}/{deployment_name(ws)}")
        if crashed:
            print(f"marked Crashed {len(crashed)} run(s) of an earlier `kaizen serve` whose process is gone: "
                  f"{', '.join(crashed)}; the next run finishes their iteration")
        prefect_serve(build(ws), build_scoring(ws), build_watch(ws), build_select(ws))
    return crashed


def ensure_process_pool(pool: str) -> str:
    """Create a process work pool with Prefect's default job template, unless one of that name exists."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound:
            template = asyncio.run(get_default_base_job_template_for_infrastructure_type("process"))
            if template is None:
                raise RuntimeError("this Prefect has no default job template for a process work pool: create "
                                   f"the pool {pool!r} yourself (`prefect work-pool create --type process`)") from None
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
            return "process"


def deploy(ws: Workspace, pool: str) -> tuple[str, list[str]]:
    """Register the four deployments on a work pool (created as a process pool if missing) and the alert
    automations. Returns the loop deployment's id and the automations' names."""
    kind = ensure_process_pool(pool)
    # a worker's run gets none of this shell's environment
    job_variables: dict[str, dict[str, str] | str] = {"env": child_environment(ws, inherit=False)}
    if kind == "process" and not ws.shared:  # a shared loop's run works in a folder of its worker's own
        job_variables["working_dir"] = str(ws.root)
    names = alerts.ensure_automations(ws)
    build_scoring(ws, job_variables, on_pool=True).apply(work_pool_name=pool)
    build_watch(ws, job_variables, on_pool=True).apply(work_pool_name=pool)
    build_select(ws, job_variables, on_pool=True).apply(work_pool_name=pool)
    deployment_id = build(ws, job_variables, on_pool=True).apply(work_pool_name=pool)
    zombies.ensure_automation(ws, deployment_id)
    return str(deployment_id), names
