"""selection: the captured texts most worth a label (`kaizen select --budget N`, the kaizen-select flow).

Three things make a text worth labeling, combined in two steps:
1. uncertainty: the model that answered it hesitated (select.uncertainty: the margin between its top two
   probabilities as captured, or their entropy). Only the select.pool_factor x N most uncertain texts go on (with
   select.by_prediction, N is first shared among the labels the champion predicted, and so is the pool).
2. diversity and coverage, on the champion's own embeddings (the mean of its last hidden layer over a text's
   tokens), by select.method:
   - `typical` (the default): the pool is cut into N clusters by k-means weighted by each text's uncertainty, and
     each cluster gives the text nearest its centre: N doubts that each stand for many like them, the densest
     doubtful regions of the traffic first (where it drifted, most of it lies there). Measured on the real stream
     (bench/README.md), picking outliers lost to random: the model learned the new domain's bulk worse.
   - `farthest`: greedy k-center from a sample of the champion's training data: the first picks lie where that
     data is thinnest, each next one as far as can be from it and from the picks before (atypical texts).
   Either way N labels are not spent on N paraphrases of one doubt, and each pick says how far it lies from the
   training data (coverage).
Candidates are captured answers with a text (a capture kept as a hash only cannot be shown to a labeler: counted
and said), one per text (collect's dedup key), neither queued before nor ingested already (the ledger knows both).
Every input is bounded: the latest select.max_capture_rows captures, select.reference_rows training rows, and
select.max_seconds for the embeddings and the picking.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from kaizen.tasks.formats.text import normalize_text, text_key
from kaizen.tasks.ingest.labeling import Queued, queued_keys, record_queued
from kaizen.tasks.ingest.ledger import Ledger
from kaizen.tasks.serving.capture import read_captures
from kaizen.tasks.serving.labeling_queue import LabelingQueue, LeftOut, queue_name, write_queue
from kaizen.tasks.serving.picking import Deadline, choose, quotas
from kaizen.tasks.workspace.layout import Workspace, hold

if TYPE_CHECKING:
    import pandas as pd

AGO = re.compile(r"(\d+(?:\.\d+)?)([mhd])")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """`--since`: an age (`90m`, `12h`, `7d`) or an ISO date or time (UTC unless it names its zone)."""
    if not text:
        return None
    if ago := AGO.fullmatch(text.strip()):
        return now - timedelta(**{UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"--since {text!r}: give an age (90m, 12h, 7d) or an ISO date or time") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def select_for_labeling(ws: Workspace, budget: int, since: datetime | None = None,
                        until: datetime | None = None) -> LabelingQueue:
    """Choose up to `budget` captured texts (answered in [since, until)) to label, write them as a labeling queue
    (tasks/serving/labeling_queue.py) and record them in the ledger; what was read, left out and queued."""
    if budget < 1:
        raise ValueError(f"the budget is the number of texts to label, at least 1 (got {budget})")
    settings, started = ws.settings.select, time.monotonic()
    with hold(ws, "select", wait=False):  # two selections at once would queue the same texts
        captures = read_captures(ws, since, until, limit_rows=settings.max_capture_rows)
        with Ledger(ws.ledger_db) as ledger:
            candidates, left = candidates_of(ws, captures, ledger)
        if candidates.empty:
            return LabelingQueue(None, (), 0, {}, len(captures), left, seconds=time.monotonic() - started)
        pool = doubtful_pool(candidates, budget, settings.pool_factor, settings.by_prediction)
        deadline = Deadline(started + settings.max_seconds, settings.max_seconds)
        chosen, champion, reference = spread_out(ws, pool, budget, deadline)
        name = queue_name(datetime.now(UTC))
        files = write_queue(ws, name, chosen)  # before the ledger: a queue recorded is a queue a labeler can have
        with Ledger(ws.ledger_db) as ledger:
            record_queued(ledger, [Queued(str(r["capture_id"]), name, str(r["model_version"]), str(r["key"]))
                                   for r in chosen.to_dict("records")])
    versions = {str(v): int(n) for v, n in chosen["model_version"].value_counts().items()}
    return LabelingQueue(name, files, len(chosen), versions, len(captures), left, pool=len(pool),
                         reference_rows=reference, champion=champion, seconds=time.monotonic() - started)


def candidates_of(ws: Workspace, captures: pd.DataFrame, ledger: Ledger) -> tuple[pd.DataFrame, LeftOut]:
    """The captures a labeler can be given, latest capture of each text, with each one's confidence and
    uncertainty; and how many were left out, by why."""
    without_text = captures["text"].isna()
    unanswered = ~without_text & captures["probabilities"].isna()
    rows = captures[~without_text & ~unanswered]
    too_long = rows["text"].str.len() > ws.settings.data.max_text_chars
    rows = rows[~too_long]
    rows = rows.assign(key=rows["text"].map(text_key))
    latest = rows.drop_duplicates("key", keep="last")  # read oldest first: the latest answer of each text
    keys = latest["key"].tolist()
    queued = latest["key"].isin(queued_keys(ledger, keys))
    labeled = latest["key"].isin(set(ledger.known_keys(keys))) & ~queued
    fresh = latest[~queued & ~labeled].copy()
    fresh["confidence"], fresh["margin"], fresh["uncertainty"] = doubt(fresh["probabilities"].tolist(),
                                                                       ws.settings.select.uncertainty)
    left = LeftOut(int(without_text.sum()), int(unanswered.sum()), int(too_long.sum()), len(rows) - len(latest),
                   int(queued.sum()), int(labeled.sum()))
    return fresh.reset_index(drop=True), left


def doubtful_pool(candidates: pd.DataFrame, budget: int, pool_factor: int, by_prediction: bool) -> pd.DataFrame:
    """The texts the diversity step chooses from: the pool_factor x N most uncertain candidates. With
    `by_prediction`, N is first shared out among the labels the champion predicted, in proportion to how often it
    predicted each among all candidates (column `quota`), and each label's pool is its quota's share: doubts alone
    can lean to one label (on the real stream 37% of one domain's picks were positive against 65% of its traffic),
    and a fine-tune on them learns that domain's other label worse."""
    import pandas as pd

    ranked = candidates.sort_values("uncertainty", ascending=False, kind="stable")
    if not by_prediction:
        return ranked.head(pool_factor * budget)
    share = quotas(candidates["prediction"].value_counts(sort=False), budget)
    return pd.concat([ranked[ranked["prediction"] == label].head(pool_factor * k).assign(quota=k)
                      for label, k in share.items() if k > 0])


def doubt(probabilities: Sequence[Sequence[float]], method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per answer: its confidence (the top probability), its margin (top minus second) and its uncertainty in
    [0, 1]: 1 - margin, or the entropy over log(classes), which compares answers over label sets of any size."""
    confidence, margin, uncertainty = (np.zeros(len(probabilities)) for _ in range(3))
    for i, given in enumerate(probabilities):
        p = np.sort(np.asarray(given, dtype=float))[::-1]
        confidence[i], margin[i] = p[0], p[0] - p[1]
        positive = p[p > 0]
        uncertainty[i] = 1.0 - margin[i] if method == "margin" else \
            float(-(positive * np.log(positive)).sum() / math.log(len(p)))
    return confidence, margin, uncertainty


def spread_out(ws: Workspace, pool: pd.DataFrame, budget: int, deadline: Deadline) -> tuple[pd.DataFrame, str, int]:
    """`budget` texts of the pool (most uncertain first), farthest-first on the champion's embeddings from its
    training sample; each with why it was chosen. Also the champion's version and the training rows used."""
    from kaizen.tasks.model.predict import load
    from kaizen.tasks.registry import tracking
    from kaizen.tasks.serving.champion import champion_version

    version = champion_version(ws)
    tokenizer, net = load(tracking.local_model(ws, version), ws.settings.train.device)
    lowercase = ws.settings.preprocess.lowercase
    points = embeddings(tokenizer, net, [normalize_text(t, lowercase) for t in pool["text"]], ws, deadline)
    reference = training_sample(ws, version)
    centres = embeddings(tokenizer, net, reference, ws, deadline) if reference else None
    picks = choose(points, pool["uncertainty"].to_numpy(), centres, budget, ws.settings.select.method,
                   ws.settings.preprocess.seed, deadline, groups=group_quotas(pool))
    chosen = pool.iloc[picks.order].assign(coverage=picks.coverage, spread=picks.spread,
                                           stands_for=picks.stands_for).reset_index(drop=True)
    chosen["why"] = [why(row, ws.settings.select.uncertainty) for row in chosen.itertuples(index=False)]
    return chosen, version, len(reference)


def why(row, method: str) -> str:
    """The scores that chose a text, in words (the queue's `why`)."""
    parts = [f"margin {row.margin:.3f}" if method == "margin" else f"entropy {row.uncertainty:.3f}"]
    if row.stands_for > 0:
        parts.append(f"nearest the centre of {row.stands_for} doubtful texts")
    if not math.isnan(row.coverage):
        parts.append(f"{row.coverage:.3f} from the training data")
    if not math.isnan(row.spread):
        parts.append(f"{row.spread:.3f} from the texts picked before it")
    return "; ".join(parts)


def group_quotas(pool: pd.DataFrame) -> list[tuple[np.ndarray, int]] | None:
    """Each predicted label's rows of a pool made `by_prediction`, and its quota (None: a pool made without)."""
    if "quota" not in pool:
        return None
    labels = pool["prediction"].to_numpy()
    return [(np.flatnonzero(labels == label), int(k)) for label, k in
            pool.drop_duplicates("prediction")[["prediction", "quota"]].itertuples(index=False)]


def training_sample(ws: Workspace, version: str) -> list[str]:
    """Up to select.reference_rows texts of the train splits `version` learned from that are on this disk (none: no
    coverage term; a shared loop's worker may not hold them)."""
    from kaizen.tasks.evaluation.evaluate import champion_reference
    from kaizen.tasks.registry import tracking
    from kaizen.tasks.registry.record import batches_seen

    wanted = ws.settings.select.reference_rows
    model = tracking.model_version(tracking.connect(ws), ws.settings.model.registered_name, version)
    seen = [b for b in batches_seen(model) if ws.split_file(b, "train").exists()]
    if not wanted or not seen:
        return []
    frame = champion_reference(ws, seen)
    return frame.sample(n=min(wanted, len(frame)), random_state=ws.settings.preprocess.seed)["text"].tolist()


def embeddings(tokenizer, net, texts: list[str], ws: Workspace, deadline: Deadline) -> np.ndarray:
    """Each text as the champion sees it: the mean of its last hidden layer over the text's tokens, unit length,
    from the same network as its answers (one forward pass a batch, shortest texts together)."""
    import torch

    order = np.argsort([len(t) for t in texts], kind="stable")
    batch, cut = ws.settings.serving.batch_size, ws.settings.model.max_length
    out = np.zeros((len(texts), net.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            deadline.check("embedding the texts")
            idx = order[start : start + batch]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=cut, padding=True,
                            return_tensors="pt").to(net.device)
            hidden = net(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out
