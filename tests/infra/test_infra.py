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

from kaizen.tasks.notify import arrivals
from kaizen.tasks.notify.events import ARRIVED
from kaizen.tasks.workspace.environment import OFFLINE_ENV
from kaizen.tasks.workspace.layout import template
from kaizen.tasks.workspace.settings import load_settings
from tests.support.workspaces import REPO

INFRA = REPO / "infra"
ROUTES = {"docker": ("kaizen-docker", "kaizen-docker"), "kubernetes": ("kaizen-k8s", "kaizen-k8s")}  # pool, id


def deployment_of(route: str, entrypoint: str = "flows/loop.py:iteration") -> tuple[dict, dict]:
    """The route's prefect.yaml and its deployment of `entrypoint` (the loop, unless named)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((INFRA / route / "prefect.yaml").read_text(encoding="utf-8"))
    PrefectYamlModel.model_validate(raw)  # what `prefect deploy` reads, or it refuses the file
    (deployment,) = [d for d in raw["deployments"] if d["entrypoint"] == entrypoint]
    return raw, deployment


CREDENTIALS = ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD",
               "PREFECT_SERVER_DATABASE_PASSWORD")


def credentials_only_from_the_environment(env: dict) -> None:
    """A credential in an environment block is a `${VAR}` / `{{ $VAR }}` reference, never a value."""
    for key in CREDENTIALS:
        if key in env:
            assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}|\{\{ \$\w+ \}\}", env[key]), (key, env[key])


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
    assert trigger.expect == {ARRIVED} and trigger.threshold == 1 and trigger.posture == "Reactive"
    assert trigger.match.model_dump() == {"prefect.resource.id": f"kaizen.workspace.{workspace_id}"}
    served = arrivals.trigger_spec(_Workspace("/workspace", workspace_id))
    assert trigger.parameters == served["parameters"]
    assert {k: env[k] for k in OFFLINE_ENV} == OFFLINE_ENV  # offline like every other run
    assert env["MLFLOW_TRACKING_URI"].startswith("http://")  # a tracking server: runs share no disk with it
    assert env["AWS_ENDPOINT_URL"].startswith("http://objectstore")  # the shared object store
    credentials_only_from_the_environment(env)


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
    install = next(i for i, line in enumerate(lines) if 'pip install ".[' in line)
    assert torch_at < install  # torch first
    extras = re.search(r'pip install "\.\[([^\]]+)\]"', lines[install]).group(1).split(",")
    assert {"s3", "gcs", "postgres"} <= set(extras)  # the image reaches the shared services
    assert "WORKDIR /opt/kaizen" in lines  # where prefect.yaml's pull step starts each run
    for key, value in OFFLINE_ENV.items():
        assert re.search(rf"\b{key}={re.escape(value)}\b", (INFRA / "Dockerfile").read_text()), key
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".kaizen", "data", ".git"} <= set(ignored)


def _joined(text: str) -> str:
    return text.replace("\\\n", " ")


def test_compose_runs_the_shared_services_a_worker_and_the_watcher() -> None:
    compose = yaml.safe_load((INFRA / "docker" / "compose.yaml").read_text())
    _, deployment = deployment_of("docker")
    services = compose["services"]
    assert set(services) == {"postgres", "objectstore", "buckets", "mlflow", "prefect", "worker", "watcher"}
    for name in ("prefect", "mlflow", "objectstore"):  # loopback only, like `kaizen up`
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    assert "ports" not in services["postgres"]  # reached by the other containers only
    for service in services.values():
        credentials_only_from_the_environment(service.get("environment", {}))
    # MLflow on PostgreSQL and the object store; Prefect's database in the same PostgreSQL.
    mlflow = services["mlflow"]
    backend = mlflow["command"][mlflow["command"].index("--backend-store-uri") + 1]
    assert backend == "postgresql://kaizen@postgres:5432/mlflow"  # no password in the URL: PGPASSWORD
    assert mlflow["command"][mlflow["command"].index("--artifacts-destination") + 1].startswith("s3://kaizen/")
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow["environment"]["AWS_ENDPOINT_URL"] == "http://objectstore:8333"
    assert {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(mlflow["environment"])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert mlflow["depends_on"]["buckets"]["condition"] == "service_completed_successfully"
    assert services["prefect"]["environment"]["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    init_sql = services["postgres"]["volumes"][1].split(":")[0]
    assert {"ledger", "prefect"} <= set(re.findall(r"CREATE DATABASE (\w+);", (INFRA / "docker" / init_sql).read_text()))
    worker = services["worker"]["command"]
    assert worker[worker.index("--pool") + 1] == deployment["work_pool"]["name"] and "docker" in worker
    job = deployment["work_pool"]["job_variables"]
    assert job["networks"] == [compose["networks"]["kaizen"]["name"]]
    assert job["volumes"] == ["{{ $KAIZEN_WORKSPACE }}:/workspace"]
    assert job["env"]["AWS_ENDPOINT_URL"] == mlflow["environment"]["AWS_ENDPOINT_URL"]
    watcher = services["watcher"]
    assert watcher["command"] == ["kaizen", "watch", "-w", "/workspace"]
    for key in ("KAIZEN_WORKSPACE_ID", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert watcher["environment"][key] == job["env"][key], key
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


def test_kubernetes_runs_the_loop_in_a_cpu_pod_and_training_as_a_gpu_job() -> None:
    import jsonschema

    template = json.loads((INFRA / "kubernetes" / "base-job-template.json").read_text())
    jsonschema.Draft7Validator.check_schema(template["variables"])
    _, loop = deployment_of("kubernetes")
    _, training = deployment_of("kubernetes", "flows/training.py:train_job")
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((INFRA / "kubernetes" / "workspace.yaml").read_text())}
    pods = {}
    for name, deployment in (("loop", loop), ("training", training)):
        job_variables = deployment["work_pool"]["job_variables"]
        assert deployment["work_pool"]["name"] == loop["work_pool"]["name"]
        jsonschema.validate(job_variables, template["variables"])  # the deployment's overrides fit the pool
        config = render_job_template(template, job_variables)
        manifest = config["job_manifest"]
        assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
        pod = manifest["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0
        (container,) = pod["containers"]
        (mount,) = container["volumeMounts"]
        (volume,) = pod["volumes"]
        assert mount == {"name": volume["name"], "mountPath": "/workspace"}  # both see the job's folder
        assert container["envFrom"] == [{"secretRef": {"name": "kaizen-credentials"}}]
        credentials_only_from_the_environment(job_variables["env"])
        assert config["namespace"] == "kaizen" and ("Namespace", "kaizen") in docs
        pods[name] = (pod, container, volume["persistentVolumeClaim"]["claimName"])
    (loop_pod, loop_box, claim), (gpu_pod, gpu_box, _) = pods["loop"], pods["training"]
    assert loop_box["resources"]["limits"]["nvidia.com/gpu"] == 0 and loop_pod["nodeSelector"] == {}
    assert gpu_box["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_pod["tolerations"])
    assert docs[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]

    # The training deployment is the one the workspace names (train.deployment, set by the init Job).
    path, _, function = training["entrypoint"].partition(":")
    flow_name = re.search(rf'@flow\(name="([^"]+)"[^)]*\)\ndef {function}\(', (REPO / path).read_text()).group(1)
    init = docs[("Job", "kaizen-init")]["spec"]["template"]["spec"]
    command = init["containers"][0]["command"]
    assert command[:3] == ["kaizen", "init", "/workspace"]
    option = lambda name: command[command.index(name) + 1]  # noqa: E731
    assert option("--train-deployment") == f"{flow_name}/{training['name']}"
    assert option("--dvc-remote").startswith("s3://") and option("--landing").startswith("s3://")
    assert option("--ledger") == "postgresql://kaizen@postgres.kaizen.svc.cluster.local:5432/ledger"

    env = docs[("ConfigMap", "kaizen-env")]["data"]
    for key in ("KAIZEN_WORKSPACE_ID", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert env[key] == loop["work_pool"]["job_variables"]["env"][key], key
    assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{docs[('Service', 'mlflow')]['metadata']['name']}.kaizen.")
    assert env["AWS_ENDPOINT_URL"].startswith(f"http://{docs[('Service', 'objectstore')]['metadata']['name']}.kaizen.")
    # MLflow on PostgreSQL and the object store; no credential in any manifest (the Secret is made by hand).
    mlflow = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["command"][mlflow["command"].index("--backend-store-uri") + 1].startswith("postgresql://kaizen@postgres.")
    assert mlflow["command"][mlflow["command"].index("--artifacts-destination") + 1].startswith("s3://kaizen/")
    assert {"secretRef": {"name": "kaizen-credentials"}} in mlflow["envFrom"]
    assert not [key for key in docs if key[0] == "Secret"]
    postgres = docs[("Deployment", "postgres")]["spec"]["template"]["spec"]["containers"][0]
    password = next(e for e in postgres["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "kaizen-credentials", "key": "PGPASSWORD"}
    watcher = docs[("Deployment", "kaizen-watcher")]["spec"]["template"]["spec"]
    assert watcher["containers"][0]["command"] == ["kaizen", "watch", "-w", "/workspace"]
    assert watcher["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    values = yaml.safe_load((INFRA / "kubernetes" / "worker-values.yaml").read_text())
    assert values["worker"]["config"] == {"workPool": loop["work_pool"]["name"], "type": "kubernetes"}
    assert values["worker"]["selfHostedServerApiConfig"]["apiUrl"] == env["PREFECT_API_URL"]
