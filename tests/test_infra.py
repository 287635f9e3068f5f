"""infra/: the Docker and Kubernetes routes, checked without an engine or a cluster. Each file is parsed and
validated with the models Prefect itself applies (`prefect deploy`'s prefect.yaml model and trigger adapter,
its job-template rendering), and held to what the code deploys: the same cron, trigger, concurrency limit and
run environment as `kaizen serve`, and names that agree across files (pool, network, claim, workspace id).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from kaizen.tasks import arrivals
from kaizen.tasks.settings import load_settings
from kaizen.tasks.workspace import OFFLINE_ENV, template
from tests.helpers import REPO

INFRA = REPO / "infra"
ROUTES = {"docker": ("kaizen-docker", "kaizen-docker"), "kubernetes": ("kaizen-k8s", "kaizen-k8s")}  # pool, id


def deployment_of(route: str) -> tuple[dict, dict]:
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((INFRA / route / "prefect.yaml").read_text(encoding="utf-8"))
    PrefectYamlModel.model_validate(raw)  # what `prefect deploy` reads, or it refuses the file
    (deployment,) = raw["deployments"]
    return raw, deployment


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_prefect_yaml_is_the_served_deployment(route: str) -> None:
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule

    pool, workspace_id = ROUTES[route]
    raw, deployment = deployment_of(route)
    settings = load_settings(template("params.yaml"))
    assert [CronSchedule(cron=s["cron"]).cron for s in deployment["schedules"]] == [settings.schedule.cron]
    limit = ConcurrencyLimitConfig.model_validate(deployment["concurrency_limit"])
    assert (limit.limit, limit.collision_strategy.value) == (1, "ENQUEUE")
    assert deployment["parameters"] == {"workspace": "/workspace"}
    assert deployment["work_pool"]["name"] == pool

    # The entrypoint names the flow in the image's code folder, where the pull step starts the run.
    path, _, function = deployment["entrypoint"].partition(":")
    assert (REPO / path).is_file() and re.search(rf"^def {function}\(", (REPO / path).read_text(), re.M)
    (step,) = raw["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/kaizen"}}

    # The trigger is the one `kaizen serve` registers, for the workspace name the runs and watcher carry.
    (trigger,) = _initialize_deployment_triggers(deployment["name"], [dict(t) for t in deployment["triggers"]])
    env = deployment["work_pool"]["job_variables"]["env"]
    assert env["KAIZEN_WORKSPACE_ID"] == workspace_id
    assert trigger.expect == {arrivals.ARRIVED} and trigger.threshold == 1 and trigger.posture == "Reactive"
    assert trigger.match.model_dump() == {"prefect.resource.id": f"kaizen.workspace.{workspace_id}"}
    served = arrivals.trigger_spec(_Workspace("/workspace", workspace_id))
    assert trigger.parameters == served["parameters"]
    assert {k: env[k] for k in OFFLINE_ENV} == OFFLINE_ENV  # offline like every other run
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")  # a tracking server: runs share no disk with it


class _Workspace:
    """The two attributes trigger_spec reads, for a workspace that lives in a container."""

    def __init__(self, root: str, workspace_id: str) -> None:
        self.root, self.workspace_id, self.landing = Path(root), workspace_id, f"{root}/data/landing"


def test_dockerfile_builds_the_code_into_an_image_with_the_pinned_torch() -> None:
    lines = [line.strip() for line in _joined((INFRA / "Dockerfile").read_text()).splitlines()
             if line.strip() and not line.strip().startswith("#")]
    instructions = [line.split()[0] for line in lines]
    assert instructions[0] == "FROM" and re.match(r"FROM python:3\.(1[1-9])", lines[0])
    for line in lines:
        if line.startswith("COPY"):
            *sources, _ = line.split()[1:]
            assert all((REPO / s).exists() for s in sources), line
    pin = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pin}" in lines
    torch_at = next(i for i, line in enumerate(lines) if "torch==${TORCH_VERSION}" in line)
    assert torch_at < next(i for i, line in enumerate(lines) if "pip install ." in line)  # torch first
    assert "WORKDIR /opt/kaizen" in lines  # where prefect.yaml's pull step starts each run
    for key, value in OFFLINE_ENV.items():
        assert re.search(rf"\b{key}={re.escape(value)}\b", (INFRA / "Dockerfile").read_text()), key
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".kaizen", "data", ".git"} <= set(ignored)


def _joined(text: str) -> str:
    return text.replace("\\\n", " ")


def test_compose_runs_servers_worker_and_watcher_for_the_docker_pool() -> None:
    compose = yaml.safe_load((INFRA / "docker" / "compose.yaml").read_text())
    _, deployment = deployment_of("docker")
    services = compose["services"]
    assert set(services) == {"prefect", "mlflow", "worker", "watcher"}
    for name in ("prefect", "mlflow"):  # loopback only, like `kaizen up`
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == deployment["work_pool"]["name"] and "docker" in worker
    job = deployment["work_pool"]["job_variables"]
    assert job["networks"] == [compose["networks"]["kaizen"]["name"]]
    assert job["volumes"] == ["{{ $KAIZEN_WORKSPACE }}:/workspace"]
    watcher = services["watcher"]
    assert watcher["command"] == ["kaizen", "watch", "-w", "/workspace"]
    assert watcher["environment"]["KAIZEN_WORKSPACE_ID"] == job["env"]["KAIZEN_WORKSPACE_ID"]
    assert watcher["environment"]["MLFLOW_TRACKING_URI"] == job["env"]["MLFLOW_TRACKING_URI"]
    assert watcher["volumes"][0].endswith(":/workspace")
    api = watcher["environment"]["PREFECT_API_URL"]
    assert api == services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"


def render_job_template(template: dict, job_variables: dict) -> dict:
    """The job configuration a worker would build for a run: defaults, then the deployment's variables."""
    from prefect.utilities.templating import apply_values, find_placeholders

    variables = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    values.update(job_variables)
    declared = {p.name for p in find_placeholders(template["job_configuration"])}
    assert declared <= set(variables), declared - set(variables)  # every placeholder is a declared variable
    return apply_values(template["job_configuration"], values)


def test_the_kubernetes_job_template_asks_for_a_gpu_node_and_mounts_the_workspace() -> None:
    import jsonschema

    template = json.loads((INFRA / "kubernetes" / "base-job-template.json").read_text())
    jsonschema.Draft7Validator.check_schema(template["variables"])
    _, deployment = deployment_of("kubernetes")
    job_variables = {k: v for k, v in deployment["work_pool"]["job_variables"].items()}
    jsonschema.validate(job_variables, template["variables"])  # the deployment's overrides fit the pool
    config = render_job_template(template, job_variables)
    manifest = config["job_manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == job_variables["image"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/workspace"}
    claim = volume["persistentVolumeClaim"]["claimName"]

    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((INFRA / "kubernetes" / "workspace.yaml").read_text())}
    assert docs[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert config["namespace"] == "kaizen" and ("Namespace", "kaizen") in docs
    env = docs[("ConfigMap", "kaizen-env")]["data"]
    assert env["KAIZEN_WORKSPACE_ID"] == deployment["work_pool"]["job_variables"]["env"]["KAIZEN_WORKSPACE_ID"]
    assert env["MLFLOW_TRACKING_URI"] == deployment["work_pool"]["job_variables"]["env"]["MLFLOW_TRACKING_URI"]
    assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{docs[('Service', 'mlflow')]['metadata']['name']}.kaizen.")
    watcher = docs[("Deployment", "kaizen-watcher")]["spec"]["template"]["spec"]
    assert watcher["containers"][0]["command"] == ["kaizen", "watch", "-w", "/workspace"]
    assert watcher["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    init = docs[("Job", "kaizen-init")]["spec"]["template"]["spec"]
    assert init["containers"][0]["command"] == ["kaizen", "init", "/workspace"]
    values = yaml.safe_load((INFRA / "kubernetes" / "worker-values.yaml").read_text())
    assert values["worker"]["config"] == {"workPool": deployment["work_pool"]["name"], "type": "kubernetes"}
    assert values["worker"]["selfHostedServerApiConfig"]["apiUrl"] == env["PREFECT_API_URL"]
