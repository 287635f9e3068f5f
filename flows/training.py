"""The training job as a Prefect flow, for `train.deployment`: a deployment of it on a work pool with GPUs
(infra/kubernetes/prefect.yaml: a Job on a GPU node) trains while the loop itself runs in a pod without one.
Both mount one volume (infra/kubernetes: an opt-in ReadWriteMany cache), where the job's folder is the whole
interface (tasks/training/jobs.py); the loop alone needs no shared volume.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from kaizen.tasks.runtime import callers
from kaizen.tasks.training import jobs
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import workspace_folder


@flow(name="kaizen-train", log_prints=True)
def train_job(job: str, processes: int = 1, workspace: str = ".") -> None:
    """Run the training job that tasks/train.fine_tune wrote into the folder `job`, on this machine; the loop
    that started this run follows its epochs in the same folder and registers the model when it is done.
    `workspace`: the loop's folder as this machine sees it (relative: under KAIZEN_HOME). A deployed run takes
    its deployment's, and works only on a job in that workspace's jobs folder (tasks/runtime/callers.py)."""
    if callers.deployed(train_job, workspace=workspace):
        job = str(callers.job_folder(Workspace.open(workspace_folder(workspace)), job))
    jobs.run_here(Path(job), processes)
    print(f"training job {job}: done")
