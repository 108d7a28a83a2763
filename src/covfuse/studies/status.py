"""Where a study stands: each run done / running / interrupted / failed / pending, and the time left.

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

from covfuse.studies.sweep import Study, busy_with, failure_path, run_status

STATES = ("done", "running", "interrupted", "failed", "pending")


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
    return {"study": study.name, "runs": runs, "counts": counts, "seconds_left": left}


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def to_text(status: dict, study: Study) -> str:
    lines = [f"study {status['study']} ({study.study_dir}): "
             + ", ".join(f"{n} {s}" for s, n in status["counts"].items() if n)]
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
