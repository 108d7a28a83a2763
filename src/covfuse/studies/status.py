"""Where a study stands: each run done / running / interrupted / failed / pending, and the time left; for an
Optuna search also its trials (done / running / pending / pruned / failed, from the journal).

Reads only the study folder (study.json, each run's metrics.json and checkpoints, the claims and
failure notes a sweep leaves beside the run folders), so it is cheap and safe to call while
other processes train. ``running`` means a process holds the run's lock now (the operating system
drops it when that process dies, so a killed run shows as interrupted or pending, never running).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from covfuse.studies import search
from covfuse.studies.sweep import Study, busy_with, failure_path, run_status
from covfuse.training.lock import LOCK_NAME, holder

STATES = ("done", "running", "interrupted", "failed", "pending")
TRIAL_STATES = ("done", "running", "pending", "pruned", "failed")


def _budget(argv) -> int | None:
    """--trials N of the search's own command (study.json keeps it)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--trials" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if arg.startswith("--trials=") and arg[9:].isdigit():
            return int(arg[9:])
    return None


def _searched(argv) -> bool:
    """Whether the study's command ran an Optuna search (``--search optuna``)."""
    args = list(argv)
    return any(a == "--search" and args[i + 1:i + 2] == ["optuna"] or a == "--search=optuna" for i, a in enumerate(args))


def trial_counts(study: Study) -> dict | None:
    """The search's trials over all cells: done (complete), running (a process holds the trial's folder), pending
    (budget not spent yet), pruned and failed (an interrupted one included: the search retries its settings);
    None when the study ran no search (or optuna is not installed)."""
    budget = _budget(study.argv)
    if not (Path(study.study_dir) / search.JOURNAL).is_file():
        if not _searched(study.argv):
            return None
        # a search whose first trial has not started yet: its whole budget is still to go
        counts = dict.fromkeys(TRIAL_STATES, 0)
        counts["pending"] = (budget or 0) * len(study.cells)
        return {"budget": budget, "cells": len(study.cells), "counts": counts}
    try:
        o = search.optuna()
    except Exception:  # noqa: BLE001 (status never fails for want of the search extra)
        return None
    states = o.trial.TrialState
    counts = dict.fromkeys(TRIAL_STATES, 0)
    storage = search.storage(study)
    for cell in study.cells:
        try:
            trials = o.load_study(study_name=cell, storage=storage).get_trials(deepcopy=False)
        except KeyError:  # no trial of this cell yet
            trials = []
        running = [t for t in trials if t.state == states.RUNNING]
        alive = sum(holder(search.trial_dir(study, cell, t.number) / LOCK_NAME) is not None for t in running)
        done = sum(t.state == states.COMPLETE for t in trials)
        pruned = sum(t.state == states.PRUNED for t in trials)
        counts["done"] += done
        counts["pruned"] += pruned
        counts["running"] += alive
        counts["failed"] += sum(t.state == states.FAIL for t in trials) + len(running) - alive  # cut off: retried
        if budget is not None:
            counts["pending"] += max(0, budget - done - pruned - alive)
    return {"budget": budget, "cells": len(study.cells), "counts": counts}


def _since(owner: str) -> float | None:
    match = re.search(r"since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", owner)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S"))


def run_state(run) -> dict:
    """One run's row: state, seconds (trained, or running so far), error, and for running runs who."""
    folder = Path(run.dir)
    row = {"cell": run.cell, "seed": run.seed, "fold": run.fold, "state": "pending", "seconds": None, "error": None}
    if run.tune:
        row["tune"] = run.tune
    owner = busy_with(run)
    status = run_status(folder)
    if owner:
        match = re.match(r"pid (\d+) on (\S+)", owner)
        since = _since(owner)
        row.update(state="running", host=match.group(2) if match else None, pid=int(match.group(1)) if match else None,
                   since=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since)) if since else None,
                   seconds=round(time.time() - since, 1) if since else None)
    elif status == "done":
        try:
            row.update(state="done", seconds=json.loads((folder / "metrics.json").read_text()).get("fit_seconds"))
        except (OSError, ValueError):
            row.update(state="done")
    elif failure_path(run).is_file():
        row.update(state="failed", error=failure_path(run).read_text().strip())
    elif status == "interrupted":
        row["state"] = "interrupted"
    return row


def study_status(study: Study) -> dict:
    """The **contract** JSON: ``{"study", "runs": [{"cell", "seed", "fold", "state", "seconds", "error"}],
    "counts": {state: n}}``, plus ``seconds_left`` (mean seconds of finished runs x runs to go, less the
    time running runs have had; None before any run finished)."""
    runs = [run_state(r) for r in study.runs]
    counts = {s: sum(r["state"] == s for r in runs) for s in STATES}
    finished = [r["seconds"] for r in runs if r["state"] == "done" and r["seconds"] is not None]
    left = None
    if finished:
        mean = sum(finished) / len(finished)
        to_go = counts["pending"] + counts["interrupted"] + counts["failed"]
        running = sum(max(0.0, mean - (r["seconds"] or 0.0)) for r in runs if r["state"] == "running")
        left = round(mean * to_go + running, 1)
    out = {"study": study.name, "runs": runs, "counts": counts, "seconds_left": left}
    trials = trial_counts(study)
    if trials is not None:
        out["trials"] = trials
    return out


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def to_text(status: dict, study: Study) -> str:
    lines = [f"study {status['study']} ({study.study_dir}): "
             + ", ".join(f"{n} {s}" for s, n in status["counts"].items() if n)]
    if status.get("trials"):
        t = status["trials"]
        per = f" ({t['budget']} per cell x {t['cells']} cells)" if t["budget"] is not None else ""
        lines.append("  search trials: " + ", ".join(f"{n} {s}" for s, n in t["counts"].items()) + per)
    for run, row in zip(study.runs, status["runs"]):
        where = Path(run.dir).relative_to(study.study_dir)
        extra = ""
        if row["state"] == "running":
            extra = f"  pid {row.get('pid')} on {row.get('host')} since {row.get('since')}"
        elif row["state"] == "failed":
            extra = f"  {row['error']}"
        elif row["state"] == "interrupted":
            extra = "  resumable: rerun the study's command"
        lines.append(f"  {row['state']:<11} {_clock(row['seconds']):>8}  {where}{extra}")
    if status["counts"]["done"] == len(study.runs):
        lines.append("every run is done: covfuse report " + str(study.study_dir))
    elif status["seconds_left"] is not None:
        lines.append(f"time left: about {_clock(status['seconds_left'])} on one process "
                     "(mean of the finished runs x the runs to go)")
    elif status["counts"]["done"] < len(study.runs):
        lines.append("time left: unknown until a run has finished")
    return "\n".join(lines) + "\n"
