"""The tables of bench/long_stream.py: from each seed's result.json, what its README section reports."""

from __future__ import annotations

from collections import Counter

import continual
import numpy as np

ARMS = ("naive", "fixed-gate", "kaizen", "joint")
# A failed check of the gate, by the words tasks/evaluation/promote.py writes for it (passed checks say "at or
# above", "improved", "not shown"). Loss lines name where the loss was shown.
FAILED = {"below min_score": "min_score", "a constant predictor is never promoted": "constant predictor",
          "no improvement shown": "no improvement shown"}
LOSS_SHOWN = " is shown (p="


def fired_checks(decision: str, reasons: list[str]) -> list[str]:
    """Which checks stopped a step: the gate's failed checks, or the label check of a suspect batch."""
    if decision == "suspect":
        return ["label check (suspect)"]
    if decision == "skipped":
        return ["not trained (skipped)"]
    fired = [name for line in reasons for words, name in FAILED.items() if words in line]
    for line in reasons:
        if LOSS_SHOWN in line:
            where = ("the new batch" if line.startswith("accuracy on the new batch") else "earlier batches pooled"
                     if line.startswith("accuracy on all earlier batches pooled") else "an earlier batch's best model"
                     if " against the best model " in line else "an earlier batch")
            fired.append(f"loss beyond max_regression on {where}")
    return fired


def _mean(held: dict) -> float:
    return float(np.mean([np.mean(hits) for hits in held.values()])) if held else float("nan")


def curve(arm: dict, at: list[int]) -> dict[str, float]:
    """Held-out mean (over the domains streamed so far) after each step in `at`; joint has only the steps it ran."""
    steps = dict(zip(arm["at"], arm["held_out"], strict=True)) if "at" in arm else dict(
        enumerate(arm["held_out"], start=1))
    return {str(k): _mean(steps.get(k, {})) for k in at}


def per_step(kaizen: dict, batches: list[str]) -> list[dict]:
    """One line per step of the kaizen arm: decision, merge alpha, held-out mean, what stopped it, flipped rows
    in its replay sample."""
    return [{"step": k, "batch": batch, "decision": decision, "merge_alpha": note.get("merge_alpha"),
             "held_out_mean": _mean(held), "fired": note.get("fired", []), "reason": note.get("reason", ""),
             "flipped_replayed": note.get("flipped_replayed", 0)}
            for k, (batch, decision, note, held) in enumerate(
                zip(batches, kaizen["decisions"], kaizen["notes"], kaizen["held_out"], strict=True), start=1)]


def _cell(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [scale * v for v in values]
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"


def stream_table(run: dict) -> str:
    domains = list(run["stream"][0]["domains"])
    lines = ["| batch | rows | " + " | ".join(domains) + " | positive share | |", "|---|" + "---|" * (len(domains) + 3)]
    lines += [f"| {b['batch']} | {b['rows']} | " + " | ".join(str(b["domains"][d]) for d in domains)
              + f" | {b['positive']:.2f} | {b['note']} |" for b in run["stream"]]
    return "\n".join(lines)


def end_vs_best(runs: list[dict]) -> str:
    """Per arm and domain, the final held-out accuracy below the best after any step since the domain arrived."""
    domains = runs[0]["domains"]
    lines = ["| arm | " + " | ".join(domains) + " | worst |", "|---|" + "---|" * (len(domains) + 1)]
    for arm in ARMS:
        drops = []
        for r in runs:
            steps = r[arm]["held_out"]["steps"]
            drops.append([max(s[d] for s in steps if d in s) - steps[-1][d] if steps else float("nan")
                          for d in domains])
        lines.append(f"| {arm} | " + " | ".join(_cell([x[i] for x in drops], 100, 1) for i in range(len(domains)))
                     + f" | {_cell([max(x) for x in drops], 100, 1)} |")
    return "\n".join(lines)


def compute_table(runs: list[dict]) -> str:
    every = runs[0]["joint_at"]
    lines = ["| arm | training samples | share of joint retraining at every step | share of joint as run "
             f"(steps {', '.join(map(str, every))}) |", "|---|---|---|---|"]
    lines += [f"| {arm} | {np.mean([r[arm]['samples'] for r in runs]):.0f} | {_cell([r[arm]['share'] for r in runs], 100, 1)}%"
              f" | {_cell([r[arm]['share_run'] for r in runs], 100, 1)}% |" for arm in ARMS]
    return "\n".join(lines)


def curve_table(runs: list[dict]) -> str:
    at = runs[0]["joint_at"]
    lines = ["| arm | " + " | ".join(f"step {k}" for k in at) + " |", "|---|" + "---|" * len(at)]
    lines += [f"| {arm} | " + " | ".join(_cell([r[arm]["curve"][str(k)] for r in runs]) for k in at) + " |"
              for arm in ARMS]
    return "\n".join(lines)


def decisions(runs: list[dict], seeds: list[str]) -> str:
    """The kaizen arm's decisions per seed, each refused step with its first reason, and the checks that fired."""
    lines, fired = [], Counter[str]()
    where: dict[str, list[str]] = {}
    for seed, r in zip(seeds, runs, strict=True):
        steps = r["kaizen"]["per_step"]
        counts = Counter(s["decision"] for s in steps)
        lines.append(f"- seed {seed}: " + ", ".join(f"{n} {d}" for d, n in counts.most_common()))
        for s in steps:
            for check in s["fired"]:
                fired[check] += 1
                where.setdefault(check, []).append(f"{seed}:{s['step']}")
            if s["decision"] != "promoted":
                lines.append(f"  - step {s['step']} {s['decision']}: {s['reason'][:240]}")
    lines += ["", "| check that stopped a step | times (all seeds) | seed:step |", "|---|---|---|"]
    lines += [f"| {check} | {n} | {', '.join(where[check])} |" for check, n in fired.most_common()] or ["| none | 0 | |"]
    return "\n".join(lines)


def flipped(runs: list[dict], seeds: list[str]) -> str:
    if not runs[0]["flip"]:
        return "no batch flipped (--flip 0)"
    lines = []
    for seed, r in zip(seeds, runs, strict=True):
        k = r["flip"]
        step = r["kaizen"]["per_step"][k - 1]
        replayed = sum(s["flipped_replayed"] for s in r["kaizen"]["per_step"][k:])
        lines.append(f"- seed {seed}, batch {k} ({step['batch']}): {step['decision']}; {replayed} of its rows in "
                     f"the {len(r['batches']) - k} later replay samples; {step['reason'][:240]}")
    return "\n".join(lines)


def kaizen_steps(runs: list[dict], seeds: list[str]) -> str:
    lines = ["| step | " + " | ".join(f"seed {s}: decision, alpha, held-out mean" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for k in range(len(runs[0]["kaizen"]["per_step"])):
        cells = [r["kaizen"]["per_step"][k] for r in runs]
        lines.append(f"| {k + 1} | " + " | ".join(
            f"{c['decision']}, {c['merge_alpha'] or '–'}, {c['held_out_mean']:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def tables(runs: list[dict], seeds_arg: str) -> str:
    seeds, arms = seeds_arg.split(","), [{a: r[a] for a in ARMS} for r in runs]
    return "\n\n".join([
        f"stream (seed {seeds[0]}):\n\n{stream_table(runs[0])}",
        f"held-out rows ({[len(c) for c in runs[0]['kaizen']['held_out']['correct']]} per domain), final models:"
        f"\n\n{continual.table(arms, runs[0]['domains'], True)}", continual.comparisons(arms),
        f"each domain's end below its best since it arrived, held out, points:\n\n{end_vs_best(runs)}",
        f"training samples (rows x epochs):\n\n{compute_table(runs)}",
        f"held-out mean over the domains streamed so far, after steps {', '.join(map(str, runs[0]['joint_at']))}:\n\n{curve_table(runs)}",
        f"kaizen's decisions:\n\n{decisions(runs, seeds)}", f"the flipped batch:\n\n{flipped(runs, seeds)}",
        f"kaizen per step:\n\n{kaizen_steps(runs, seeds)}"]) + "\n"
