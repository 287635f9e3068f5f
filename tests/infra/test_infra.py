"""infra/: the Docker and Kubernetes routes, checked without an engine or a cluster. Each file is parsed and
validated with the models Prefect itself applies (`prefect deploy`'s prefect.yaml model and trigger adapter,
its job-template rendering), and held to what the code deploys: the same cron, trigger, concurrency limit and
run environment as `kaizen serve`, the parameters `kaizen deploy --pool` gives a shared loop (a relative folder
under KAIZEN_HOME that joins the loop from its database), and names that agree across files (pool, network,
volume, loop id). No file needs a shared workspace volume: what volumes remain for kaizen's containers are caches.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from kaizen.tasks.notify import arrivals
from kaizen.tasks.notify.events import ARRIVED
from kaizen.tasks.workspace.environment import OFFLINE_ENV
from kaizen.tasks.workspace.members import template, workspace_folder
from kaizen.tasks.workspace.settings import load_settings
from tests.support.workspaces import REPO

INFRA = REPO / "infra"
ROUTES = {"docker": ("kaizen-docker", "kaizen-docker"), "kubernetes": ("kaizen-k8s", "kaizen-k8s")}  # pool, id
JOIN = {"docker": "postgresql://kaizen@postgres:5432/ledger",  # the ledger each route's `kaizen init` records
        "kubernetes": "postgresql://kaizen@postgres.kaizen.svc.cluster.local:5432/ledger"}


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


class _SharedLoop:
    """The attributes run_parameters reads, for a shared loop (its ledger PostgreSQL)."""

    shared = True

    def __init__(self, workspace_id: str, ledger: str) -> None:
        self.workspace_id, self.ledger_db = workspace_id, ledger


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_prefect_yaml_is_the_served_deployment(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule

    from kaizen.flows.deployment import run_parameters
    from kaizen.flows.loop import iteration

    pool, workspace_id = ROUTES[route]
    raw, deployment = deployment_of(route)
    settings = load_settings(template("params.yaml"))
    assert [CronSchedule(cron=s["cron"]).cron for s in deployment["schedules"]] == [settings.schedule.cron]
    limit = ConcurrencyLimitConfig.model_validate(deployment["concurrency_limit"])
    assert (limit.limit, limit.collision_strategy.value) == (1, "ENQUEUE")
    assert deployment["work_pool"]["name"] == pool

    # What `kaizen deploy --pool` registers for a shared loop: a relative folder, and the loop's database to join
    # when that folder is empty. No path of any host: a run works on whichever disk its worker gives it.
    parameters = deployment["parameters"]
    assert parameters == {"workspace": "kaizen", "join": JOIN[route]}
    assert set(parameters) == set(run_parameters(_SharedLoop(workspace_id, JOIN[route]), on_pool=True))
    jsonschema.validate(parameters, iteration.parameters.model_dump_for_openapi())  # parameters of the flow
    assert "@" in parameters["join"] and ":" not in parameters["join"].split("//")[1].split("@")[0]  # no password
    env = deployment["work_pool"]["job_variables"]["env"]
    assert Path(env["KAIZEN_HOME"]).is_absolute()
    monkeypatch.setenv("KAIZEN_HOME", env["KAIZEN_HOME"])  # the run's environment: its folder lies in the cache
    assert workspace_folder(parameters["workspace"]) == Path(env["KAIZEN_HOME"]).resolve() / "kaizen"

    # The entrypoint names the flow in the image's code folder, where the pull step starts the run.
    path, _, function = deployment["entrypoint"].partition(":")
    assert (REPO / path).is_file() and re.search(rf"^def {function}\(", (REPO / path).read_text(), re.M)
    (step,) = raw["pull"]
    assert step == {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/kaizen"}}

    # The trigger is the one `kaizen serve` registers, for the loop id the runs and watcher carry; the runs it
    # starts get the deployment's parameters (join included) and the files of the event.
    (trigger,) = _initialize_deployment_triggers(deployment["name"], [dict(t) for t in deployment["triggers"]])
    assert env["KAIZEN_WORKSPACE_ID"] == workspace_id
    assert trigger.expect == {ARRIVED} and trigger.threshold == 1 and trigger.posture == "Reactive"
    assert trigger.match.model_dump() == {"prefect.resource.id": f"kaizen.workspace.{workspace_id}"}
    served = arrivals.trigger_spec(_Workspace(parameters["workspace"], workspace_id))
    assert trigger.parameters == {**parameters, "files": served["parameters"]["files"]}
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
    assert "VOLUME" not in instructions  # no workspace volume: a container joins the loop into its KAIZEN_HOME
    assert "ENV KAIZEN_HOME=/cache" in lines  # never the code's folder, even where a run's env forgets it
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
    assert job["env"]["AWS_ENDPOINT_URL"] == mlflow["environment"]["AWS_ENDPOINT_URL"]
    assert deployment["parameters"]["join"].startswith("postgresql://kaizen@postgres:5432/")  # compose's PostgreSQL
    # No workspace volume: a run's one volume is this host's cache, a named volume of compose's at its KAIZEN_HOME.
    cache = job["env"]["KAIZEN_HOME"]
    assert job["volumes"] == [f"kaizen-cache:{cache}"]
    assert compose["volumes"]["kaizen-cache"] == {"name": "kaizen-cache"}  # the name the worker's runs mount
    for name in ("buckets", "mlflow", "watcher"):  # kaizen's containers: no host folder, a cache at most
        assert all(v == f"kaizen-cache:{cache}" for v in services[name].get("volumes", [])), name
    assert not re.search(r"KAIZEN_WORKSPACE\b|/workspace(?![\w.])", (INFRA / "docker" / "compose.yaml").read_text())
    # The watcher joins the loop into a folder of its own in the cache, then watches it.
    watcher = services["watcher"]
    shell, flag, script = watcher["command"]
    assert (shell, flag) == ("sh", "-c")
    join, watch = (shlex.split(part) for part in script.split("&&"))
    assert join == ["kaizen", "init", f"{cache}/watcher", "--join", deployment["parameters"]["join"]]
    assert watch == ["exec", "kaizen", "watch", "-w", f"{cache}/watcher"]
    assert watcher["volumes"] == [f"kaizen-cache:{cache}"]
    assert watcher["depends_on"]["postgres"]["condition"] == "service_healthy"
    for key in ("KAIZEN_WORKSPACE_ID", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "KAIZEN_HOME"):
        assert watcher["environment"][key] == job["env"][key], key
    api = watcher["environment"]["PREFECT_API_URL"]
    assert api == services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"


def test_docker_readme_records_the_loop_once_from_a_throwaway_folder() -> None:
    """The README's one-shot `kaizen init`: the loop recorded under the id the trigger matches, on the ledger the
    runs join, from a folder of a `--rm` container (no host folder, no volume)."""
    _, deployment = deployment_of("docker")
    readme = _joined((INFRA / "README.md").read_text())
    (line,) = [line for line in readme.splitlines() if "kaizen init" in line and "docker run" in line]
    words = shlex.split(line.split("#")[0])
    assert words[:3] == ["docker", "run", "--rm"] and "-v" not in words and "--volume" not in words
    assert f"KAIZEN_WORKSPACE_ID={ROUTES['docker'][1]}" in words
    assert words[words.index("--network") + 1] == "kaizen"
    init = words[words.index("init") - 1:]
    assert init[:2] == ["kaizen", "init"] and "--join" not in init
    assert init[init.index("--ledger") + 1] == deployment["parameters"]["join"]
    assert not re.search(r"KAIZEN_WORKSPACE\b|/workspace(?![\w.])", readme)  # no host folder for the loop


def render_job_template(template: dict, job_variables: dict) -> dict:
    """The job configuration a worker would build for a run: defaults, then the deployment's variables."""
    from prefect.utilities.templating import apply_values, find_placeholders

    variables = template["variables"]["properties"]
    values = {name: spec["default"] for name, spec in variables.items() if "default" in spec}
    values.update(job_variables)
    declared = {p.name for p in find_placeholders(template["job_configuration"])}
    assert declared <= set(variables), declared - set(variables)  # every placeholder is a declared variable
    return apply_values(template["job_configuration"], values)


def test_kubernetes_runs_the_loop_on_a_gpu_node_from_the_stores_with_no_shared_volume() -> None:
    import jsonschema

    template = json.loads((INFRA / "kubernetes" / "base-job-template.json").read_text())
    jsonschema.Draft7Validator.check_schema(template["variables"])
    assert "workspace_claim" not in template["variables"]["properties"]  # no workspace PVC to name
    _, loop = deployment_of("kubernetes")
    _, training = deployment_of("kubernetes", "flows/training.py:train_job")
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((INFRA / "kubernetes" / "workspace.yaml").read_text())}
    env = docs[("ConfigMap", "kaizen-env")]["data"]
    cache = loop["work_pool"]["job_variables"]["env"]["KAIZEN_HOME"]
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
        # A cache at KAIZEN_HOME, by default an emptyDir: each run joins the loop on an empty disk.
        assert volume == {"name": "cache", "emptyDir": {}}
        assert mount == {"name": "cache", "mountPath": cache} and job_variables["env"]["KAIZEN_HOME"] == cache
        assert container["envFrom"] == [{"secretRef": {"name": "kaizen-credentials"}}]
        credentials_only_from_the_environment(job_variables["env"])
        assert config["namespace"] == "kaizen" and ("Namespace", "kaizen") in docs
        pods[name] = (pod, container)
    # The loop fine-tunes in its own pod, on a GPU node: no other pod needs to see its folder.
    for pod, box in pods.values():
        assert box["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert loop["parameters"]["join"] == JOIN["kubernetes"]

    # The optional cache PVC: a deployment may keep its cache between runs; the volume is still called "cache"
    # and mounted at KAIZEN_HOME, and nothing else can be put there.
    claim = {"name": "cache", "persistentVolumeClaim": {"claimName": "kaizen-cache"}}
    kept = {**loop["work_pool"]["job_variables"], "cache_volume": claim}
    jsonschema.validate(kept, template["variables"])
    kept_pod = render_job_template(template, kept)["job_manifest"]["spec"]["template"]["spec"]
    assert kept_pod["volumes"] == [claim] and kept_pod["containers"][0]["volumeMounts"][0]["mountPath"] == cache
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**kept, "cache_volume": {**claim, "name": "workspace"}}, template["variables"])

    # No PVC is required but the services' own data (PostgreSQL's, the object store's), each mounted by that
    # service alone; none is ReadWriteMany.
    claims = {name for kind, name in docs if kind == "PersistentVolumeClaim"}
    assert claims == {"kaizen-postgres", "kaizen-objectstore"}
    assert all(docs[("PersistentVolumeClaim", c)]["spec"]["accessModes"] == ["ReadWriteOnce"] for c in claims)
    for (kind, name), doc in docs.items():
        if kind in ("Deployment", "Job"):
            volumes = doc["spec"]["template"]["spec"].get("volumes", [])
            mounted = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
            assert mounted <= ({f"kaizen-{name}"} if name in ("postgres", "objectstore") else set()), name

    # The init Job records the loop under the id the trigger matches, from a folder thrown away with its pod; the
    # optional training deployment stays off (it would need its pod and the loop's to share a volume).
    path, _, function = training["entrypoint"].partition(":")
    flow_name = re.search(rf'@flow\(name="([^"]+)"[^)]*\)\ndef {function}\(', (REPO / path).read_text()).group(1)
    init = docs[("Job", "kaizen-init")]["spec"]["template"]["spec"]
    (container,) = init["containers"]
    command = container["command"]
    assert command[:2] == ["kaizen", "init"] and "volumeMounts" not in container and "volumes" not in init
    assert {"configMapRef": {"name": "kaizen-env"}} in container["envFrom"]  # KAIZEN_WORKSPACE_ID: the loop's id
    option = lambda name: command[command.index(name) + 1]  # noqa: E731
    assert "--train-deployment" not in command and "--join" not in command
    assert option("--dvc-remote").startswith("s3://") and option("--landing").startswith("s3://")
    assert option("--ledger") == loop["parameters"]["join"]
    opt_in = f"train.deployment: {flow_name}/{training['name']}"  # how the split is turned on, where it is told
    assert opt_in in (INFRA / "kubernetes" / "prefect.yaml").read_text() and opt_in in (INFRA / "README.md").read_text()

    for key in ("KAIZEN_WORKSPACE_ID", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "KAIZEN_HOME"):
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
    # The watcher joins the loop into its pod's emptyDir, then watches that folder.
    watcher = docs[("Deployment", "kaizen-watcher")]["spec"]["template"]["spec"]
    assert watcher["volumes"] == [{"name": "cache", "emptyDir": {}}]
    (join,) = watcher["initContainers"]
    (watch,) = watcher["containers"]
    folder = f"{env['KAIZEN_HOME']}/watcher"
    assert join["command"] == ["kaizen", "init", folder, "--join", loop["parameters"]["join"]]
    assert watch["command"] == ["kaizen", "watch", "-w", folder]
    for box in (join, watch):
        assert box["volumeMounts"] == [{"name": "cache", "mountPath": env["KAIZEN_HOME"]}]
        assert {"configMapRef": {"name": "kaizen-env"}} in box["envFrom"]
    values = yaml.safe_load((INFRA / "kubernetes" / "worker-values.yaml").read_text())
    assert values["worker"]["config"] == {"workPool": loop["work_pool"]["name"], "type": "kubernetes"}
    assert values["worker"]["selfHostedServerApiConfig"]["apiUrl"] == env["PREFECT_API_URL"]
