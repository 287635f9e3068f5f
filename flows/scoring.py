"""Batch scoring as a Prefect flow: the second deployment of a workspace (flows/deployment.py), run from the
Prefect UI or API with a `source` and an `out` (`prefect deployment run 'kaizen-score/<workspace>' -p
source=... -p out=...`), each under `serving.roots`. The work is tasks/serving/scoring.py's, as under `kaizen
score`, so the rows it labels are recorded in the workspace's captures alike (tasks/serving/capture.py); the run
shows a progress artifact while it goes and a markdown artifact with the outcome.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from kaizen.tasks.runtime import callers
from kaizen.tasks.runtime.progress import RunProgress
from kaizen.tasks.serving import scoring
from kaizen.tasks.workspace.layout import Workspace
from kaizen.tasks.workspace.members import open_member


@task(name="score", cache_policy=NO_CACHE)
def score_with_progress(ws: Workspace, source: str, out: str) -> scoring.ScoreResult:
    progress = RunProgress("kaizen-scoring", f"scoring {source} with the champion")
    return scoring.score(ws, source, out, progress=lambda done, rows: progress.update(done, f"{rows} rows written"))


@flow(name="kaizen-score", log_prints=True)
def score(source: str, out: str, workspace: str = ".", join: str | None = None) -> dict:
    """Label every text of `source` (a file, a folder or an fsspec URL) with the champion into the Parquet `out`.
    `join`: as for the loop's runs (flows/loop.py), a worker's empty folder joins the shared loop first.
    A deployed run works in its deployment's folder, and reads and writes only under `serving.roots`
    (tasks/runtime/callers.py); there a relative `source` or `out` is taken in the workspace."""
    deployed = callers.deployed(score, workspace=workspace, join=join)
    ws = open_member(workspace, join)
    if deployed:
        source, out = callers.scoring_locations(ws, source, out)
    result = score_with_progress(ws, source, out)
    problems = "".join(f"- {problem}\n" for problem in result.problems)
    create_markdown_artifact(
        key="kaizen-scoring-summary", description=f"kaizen scoring of {source}",
        markdown=(f"# kaizen scoring\n\n`{source}` -> `{result.out}` with champion v{result.model_version}: "
                  f"{result.rows} rows from {result.files} file(s), {result.labelled} labelled, "
                  f"{result.with_reason} with a reason, in {result.seconds:.1f} s; {result.captured} recorded in the "
                  f"workspace's captures.\n"
                  + (f"\n## Files or parts not read\n{problems}" if problems else "")))
    print(f"wrote {result.rows} rows to {result.out} (champion v{result.model_version})")
    return result.as_dict()
