"""watch: has the traffic the champion answers drifted from what it learned, before any label exists?

A watch reads the captures (tasks/serving/capture.py) since the last verdict, at most `watch.window_hours` back and
the latest `watch.max_rows` of them, and runs two Evidently reports (tasks/evaluation/reports.py's drift_report):
- text drift: the answered texts (content, length, word count) against a sample of the champion's training data
  (evaluate.champion_reference), as the loop checks a batch; only where the captures hold texts (capture.keep_text);
- output drift: the champion's predictions and confidence (its highest probability) on the texts it answered,
  against its own on the test splits of the batches it learned (the rows the gate judges them on, whose
  predictions it already keeps: evaluate.earlier_rows, predictions.predictions_on_each).
Drift is shown when `watch.threshold` of the checked columns drifted. Each verdict is an MLflow run of its own in
the workspace's experiment (kaizen.watch.* tags, `watch.*` metrics, the reports), which the next watch and `kaizen
status` read back; alerts.announce_traffic tells people. Here in serving, not evaluation: the captures are
serving's, and a wing reads only those below it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaizen.tasks.evaluation import evaluate, predictions
from kaizen.tasks.evaluation.reports import DriftResult, drift_report
from kaizen.tasks.registry import tracking
from kaizen.tasks.registry.record import batches_seen, in_workspace
from kaizen.tasks.registry.tags import TAG
from kaizen.tasks.serving.capture import read_captures
from kaizen.tasks.workspace.layout import Workspace

if TYPE_CHECKING:
    import pandas as pd

SHOWN, NOT_SHOWN = "drift shown", "no drift shown"
TEXT_COLUMNS = ("text", "text_length", "word_count")  # the text and reports.py's descriptors of it
OUTPUT_COLUMNS = ("prediction", "confidence")


@dataclass(frozen=True)
class TrafficDrift:
    since: datetime
    until: datetime
    rows: int  # captures read in the window
    answered: int  # of them, texts the model answered (the rest got a reason)
    champion_version: str | None
    drifted: bool | None  # None: no verdict (no champion, too little traffic, nothing that could be checked)
    share: float | None  # share of the checked columns that drifted
    columns: dict[str, float]  # each checked column's score (reports.DriftResult.columns)
    drifted_columns: tuple[str, ...]
    notes: tuple[str, ...]  # what was not checked, and why
    reports: tuple[Path, ...]
    run_id: str | None = None  # the MLflow run of a verdict

    @property
    def verdict(self) -> str:
        return "no verdict" if self.drifted is None else SHOWN if self.drifted else NOT_SHOWN

    def describe(self) -> str:
        """The watch in one line (`kaizen watch-traffic`, the flow's log and artifact)."""
        head = (f"{self.verdict}: {self.answered} answered of {self.rows} captured from {self.since:%Y-%m-%d %H:%M} "
                f"to {self.until:%Y-%m-%d %H:%M} UTC")
        if self.share is not None:
            head += f", share {self.share:.2f} (champion v{self.champion_version}, MLflow run {self.run_id})"
        if self.drifted_columns:
            head += f"; drifted: {', '.join(self.drifted_columns)}"
        return "; ".join([head, *self.notes])

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found.update(since=self.since.isoformat(), until=self.until.isoformat(), verdict=self.verdict,
                     drifted_columns=list(self.drifted_columns), notes=list(self.notes),
                     reports=[str(p) for p in self.reports])
        return found


def watch_traffic(ws: Workspace, since: datetime | None = None, until: datetime | None = None) -> TrafficDrift:
    """Check the captures of [since, until) for drift: by default since the last verdict (at most
    watch.window_hours back) until now, less the time a record may wait in its writer's buffer. A verdict is
    logged as an MLflow run; no verdict (no champion, too little traffic) logs nothing, and its rows count
    towards the next watch."""
    settings = ws.settings.watch
    lag = timedelta(seconds=2 * ws.settings.capture.flush_seconds)  # a record reaches its file that late at most
    until = until or datetime.now(UTC) - lag
    if since is None:
        since = until - timedelta(hours=settings.window_hours)
        last = last_watch(ws)
        if last is not None:
            since = max(since, datetime.fromisoformat(last["until"]))
    captured = read_captures(ws, since, until, limit_rows=settings.max_rows)
    answered = captured[captured["prediction"].notna() & captured["probabilities"].notna()]
    client = tracking.connect(ws)
    champion = tracking.model_by_alias(client, ws.settings.model.registered_name, tracking.CHAMPION)

    def no_verdict(why: str) -> TrafficDrift:
        return TrafficDrift(since, until, len(captured), len(answered), champion.version if champion else None,
                            None, None, {}, (), (why,), ())

    if champion is None:
        return no_verdict("no champion yet: nothing to compare the traffic with")
    if len(answered) < settings.min_rows:
        return no_verdict(f"not enough traffic: {len(answered)} answered text(s) captured since "
                          f"{since:%Y-%m-%d %H:%M} UTC, fewer than watch.min_rows ({settings.min_rows})")
    folder = ws.runs_dir / "watch" / f"{until:%Y%m%dT%H%M%SZ}"
    checks = [_text_drift(ws, champion, answered, folder / "text-drift.html"),
              _output_drift(ws, champion, answered, folder / "output-drift.html")]
    results = [c for c in checks if isinstance(c, DriftResult)]
    notes = tuple(c for c in checks if isinstance(c, str))
    if not results:
        return no_verdict("; ".join(notes))
    columns = {name: score for r in results for name, score in r.columns.items()}
    drifted = tuple(name for r in results for name in r.drifted_columns)
    share = len(drifted) / len(columns)
    found = TrafficDrift(since, until, len(captured), len(answered), champion.version, share >= settings.threshold,
                         share, columns, drifted, notes, tuple(r.html for r in results))
    return _logged(ws, client, found)


def _text_drift(ws: Workspace, champion: tracking.ModelRef, answered: pd.DataFrame, html: Path) -> DriftResult | str:
    """Drift of the answered texts from the champion's training data, or why it was not checked."""
    from kaizen.tasks.formats.text import normalize_text

    texts = answered["text"].dropna()
    if len(texts) < ws.settings.watch.min_rows:
        return (f"text drift not checked: texts are not kept (capture.keep_text: false), {len(texts)} of the "
                f"{len(answered)} answered captures hold one")
    seen = [b for b in batches_seen(champion) if ws.split_file(b, "train").exists()]
    if not seen:
        return f"text drift not checked: champion v{champion.version}'s training data is not in this workspace"
    current = texts.map(lambda t: normalize_text(t, ws.settings.preprocess.lowercase)).to_frame("text")
    return drift_report(evaluate.champion_reference(ws, seen), current, text="text",
                        text_method=ws.settings.drift.text_method, threshold=ws.settings.watch.threshold,
                        html_path=html)


def _output_drift(ws: Workspace, champion: tracking.ModelRef, answered: pd.DataFrame,
                  html: Path) -> DriftResult | str:
    """Drift of the champion's answers to the traffic from its answers on its test splits, or why not checked.
    Only the texts the champion answered count: another version's answers say nothing about it."""
    import pandas as pd

    own = answered[answered["model_version"] == champion.version]
    if len(own) < ws.settings.watch.min_rows:
        others = sorted(set(answered["model_version"]) - {champion.version})
        return (f"prediction and confidence drift not checked: champion v{champion.version} answered {len(own)} "
                f"of the texts, fewer than watch.min_rows (the rest: v{', v'.join(others)})")
    batches = [b for b in batches_seen(champion) if ws.split_file(b, "test").exists()]
    if not batches:
        return (f"prediction and confidence drift not checked: champion v{champion.version}'s test splits are not "
                "in this workspace")
    kept = predictions.predictions_on_each(ws, tracking.local_model(ws, champion.version), champion, batches, "test",
                                           rows=evaluate.earlier_rows(ws, batches, new_batch=""))
    reference = pd.concat(kept.values(), ignore_index=True)
    probabilities = reference[[c for c in reference.columns if c.startswith("p_")]]
    reference = pd.DataFrame({"prediction": reference["predicted"], "confidence": probabilities.max(axis=1)})
    current = pd.DataFrame({"prediction": own["prediction"], "confidence": own["probabilities"].map(max)})
    return drift_report(reference, current, categorical=["prediction"], numerical=["confidence"],
                        text_method=ws.settings.drift.text_method, threshold=ws.settings.watch.threshold,
                        html_path=html)


def _logged(ws: Workspace, client, found: TrafficDrift) -> TrafficDrift:
    """The verdict as an MLflow run of its own in the workspace's experiment; `found` with its run id."""
    from dataclasses import replace

    from kaizen.tasks.evaluation.evaluate import METRIC_UNSAFE
    from kaizen.tasks.registry.tags import MLFLOW_TAG

    tags = {TAG["workspace"]: ws.workspace_id, TAG["champion_version"]: found.champion_version,
            TAG["watch_since"]: found.since.isoformat(), TAG["watch_until"]: found.until.isoformat(),
            TAG["watch_verdict"]: found.verdict, TAG["watch_drifted"]: "\n".join(found.drifted_columns),
            TAG["watch_notes"]: "\n".join(found.notes),
            MLFLOW_TAG["note"]: f"kaizen: a watch of the captured traffic: {found.verdict}"}
    run = client.create_run(tracking.experiment_id(client, ws), run_name=f"watch-{found.until:%Y%m%dT%H%M%SZ}",
                            tags=tags)
    run_id = run.info.run_id
    metrics = {"watch.rows": found.rows, "watch.answered": found.answered, "watch.share": found.share or 0.0,
               "watch.drifted": float(bool(found.drifted))}
    metrics.update({f"watch.{METRIC_UNSAFE.sub('_', name)}": score for name, score in found.columns.items()})
    tracking.log_metrics(client, run_id, metrics)
    for report in found.reports:
        client.log_artifact(run_id, str(report), "reports")
    found = replace(found, run_id=run_id)
    client.log_dict(run_id, found.as_dict(), "watch.json")
    client.set_terminated(run_id, "FINISHED")
    return found


def last_watch(ws: Workspace) -> dict[str, Any] | None:
    """The latest verdict of a watch in this workspace, read back from its MLflow run (None: never watched)."""
    client = tracking.connect(ws)
    runs = client.search_runs([tracking.experiment_id(client, ws)], max_results=20,
                              filter_string=f"tags.`{TAG['watch_until']}` != ''",
                              order_by=["attributes.start_time DESC"])
    run = next((r for r in runs if in_workspace(r, ws)), None)
    if run is None:
        return None
    tags, metrics = run.data.tags, run.data.metrics
    return {"run_id": run.info.run_id, "at": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(),
            "since": tags[TAG["watch_since"]], "until": tags[TAG["watch_until"]],
            "rows": int(metrics.get("watch.rows", 0)), "answered": int(metrics.get("watch.answered", 0)),
            "verdict": tags.get(TAG["watch_verdict"]), "share": metrics.get("watch.share"),
            "drifted_columns": [c for c in tags.get(TAG["watch_drifted"], "").splitlines() if c],
            "notes": [n for n in tags.get(TAG["watch_notes"], "").splitlines() if n],
            "champion_version": tags.get(TAG["champion_version"]) or None}
