"""`covfuse sweep --search optuna --trials N --tune KEY=SPACE`: the same seeded Optuna search for every cell.

Each cell (method) gets N trials of its own (TPE, seeded the same for every cell, so the first random
trials are the same settings for every method), trained on train and scored on the validation split
only; a trial whose validation curve falls behind the median of the finished trials at the same epoch
is pruned. The best trial's settings then make the cell's study runs ``<cell>/s<seed>``, each scored
once on test as in any sweep (with one seed that run retrains the best trial's model exactly: CPU
training is deterministic). Trials live in ``<cell>/trials/t<NNN>/``; Optuna's record in
``<study>/optuna.journal``, a journal file (append-only, file-locked) that SLURM array tasks share
on a network disk where SQLite is unsafe. ``search.json`` holds what the report's tuning table shows.

An interrupted search continues, never repeats: the cut-off trial stays failed in the journal and its settings
are trained again as a new trial, and each fresh draw's sampler seed comes from the search's seed and the number
of fresh draws already in the journal (see :func:`draw_seed`).

Several processes (SLURM tasks) may run one search: a process claims its next trial under ``<study>/.search.lock``
(asks Optuna for it and takes the trial's claim ``<cell>/trials/.tNNN.claim`` in one step), so no trial is trained
twice and a live one is never taken over; a trial whose process died (its claim free, the journal still saying
running) is failed in the journal and marked killed in its trackers by the next process that looks
(:func:`reap_trials`), and its settings are trained again. A cell's study runs wait for its last trial: the
process that finishes it trains them.

Space syntax (``--tune`` or the study file's ``sweep: tune:``): ``KEY=V1,V2`` (a list of choices),
``KEY=LO..HI`` (uniform; integers if both ends are), ``KEY=log:LO..HI`` (log-uniform).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from covfuse.errors import RunInterrupted, UserError, brief
from covfuse.io import atomic_write_text
from covfuse.studies.format import DASH, md_escape, settings_text, sig
from covfuse.studies.sweep import (
    Run, Study, again, busy_with, claim_path, end_parents, grown, mark_killed, parse_run, prepare_tracking, reap,
    run_one, say, take_dead, write_study,
)
from covfuse.training import config as cfgmod
from covfuse.training import tracking
from covfuse.training.lock import Claim, folder_lock
from covfuse.training.tasks import MONITOR_SCORES, direction

JOURNAL = "optuna.journal"
SEARCH_LOCK = ".search.lock"  # held while a process claims its next trial, finds dead ones or writes search.json
SUMMARY = "search.json"
EVAL = ("valid",)
OBJECTIVE = {monitor: (score, "minimize" if direction(score) == "min" else "maximize")
             for monitor, score in MONITOR_SCORES.items()}
"""Each monitor's objective: the metrics.json score of the valid split and Optuna's direction (covfuse.training.tasks)."""
RETRY_OF = "retry_of"  # user attribute of a trial that repeats an interrupted one's settings
INTERRUPTED = "interrupted"  # user attribute of a trial cut off by Ctrl-C, SIGTERM or a killed process
MAX_ATTEMPTS = 3  # a cell stops with an error once failed trials push it past this many times its budget
PRUNER_STARTUP = 2  # finished trials before pruning starts: the median of fewer says little
_RANGE = re.compile(r"^(log:)?\s*([^.][^ ]*?)\s*\.\.\s*(\S+)$")


def optuna():
    """The optuna module, or one line naming the extra to install."""
    try:
        import optuna as module
    except ImportError:
        raise UserError("--search optuna needs the optuna package: pip install 'covfuse[search]'") from None
    module.logging.set_verbosity(module.logging.WARNING)
    return module


def _number(text: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_space(tune: dict[str, list[Any]]) -> dict[str, Any]:
    """``{"optim.lr": ["log:1e-4..1e-2"], "model.fusion": ["a", "b"]}`` -> Optuna distributions by key."""
    dist = optuna().distributions
    out: dict[str, Any] = {}
    for key, values in tune.items():
        values = [str(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v for v in values]
        match = _RANGE.match(values[0]) if len(values) == 1 and isinstance(values[0], str) else None
        if match:
            log, lo, hi = bool(match.group(1)), _number(match.group(2)), _number(match.group(3))
            if isinstance(lo, str) or isinstance(hi, str) or not lo < hi or (log and lo <= 0):
                raise UserError(f"--tune {key}={values[0]}: a range is LO..HI with numbers LO < HI "
                                f"(log:LO..HI needs LO > 0), e.g. --tune {key}=log:1e-4..1e-2")
            both_int = isinstance(lo, int) and isinstance(hi, int)
            out[key] = (dist.IntDistribution(lo, hi, log=log) if both_int
                        else dist.FloatDistribution(float(lo), float(hi), log=log))
        else:
            out[key] = dist.CategoricalDistribution([_number(v) if isinstance(v, str) else v for v in values])
    if not out:
        raise UserError("--search optuna needs a space: --tune KEY=V1,V2 | KEY=LO..HI | KEY=log:LO..HI")
    return out


def storage(study: Study):
    """Optuna's journal file in the study folder (safe for concurrent SLURM tasks on a shared disk)."""
    journal = optuna().storages.journal
    path = Path(study.study_dir) / JOURNAL
    return optuna().storages.JournalStorage(journal.JournalFileBackend(str(path)))


def _cell_study(study: Study, cell: str, seed: int, direction: str):
    o = optuna()
    return o.create_study(study_name=cell, storage=storage(study), direction=direction, load_if_exists=True,
                          sampler=o.samplers.TPESampler(seed=seed),
                          pruner=o.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP, n_warmup_steps=0))


def draw_seed(seed: int, ostudy) -> int:
    """The sampler seed of the next fresh draw: the search's seed mixed with the number of fresh draws already in
    the journal. A sampler seeded once per process would replay its sequence after an interruption (the rerun's
    first draw would repeat trial 0); this way draw k has the same seed whether or not the search was cut off,
    and the sampler (TPE) still sees every trial already in the journal."""
    from covfuse.training.resume import mix  # lazy: resume imports torch (report and status import this module)

    fresh = [t for t in ostudy.get_trials(deepcopy=False) if RETRY_OF not in t.user_attrs]
    return mix(seed, len(fresh)) % 2**32


def retry_interrupted(ostudy) -> list[int]:
    """Queue each interrupted trial's settings once more (a new trial with the same settings; the interrupted one
    stays failed in the journal); returns the numbers of the trials queued again."""
    o = optuna()
    trials = ostudy.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    out = []
    for t in trials:
        if t.state == o.trial.TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in retried \
                and t.params:
            ostudy.enqueue_trial(dict(t.params), user_attrs={RETRY_OF: t.number})
            out.append(t.number)
    return out


def _counted(ostudy) -> list:
    """The trials that spend the budget: finished (complete or pruned) and still running."""
    states = optuna().trial.TrialState
    return [t for t in ostudy.get_trials(deepcopy=False) if t.state in (states.COMPLETE, states.PRUNED, states.RUNNING)]


def pruning_callback(trial, monitor: str):
    """A Lightning callback reporting the monitored validation metric after each validation; when the pruner
    says the trial is behind, the next epoch raises TrialPruned instead of starting (so that epoch's
    checkpoints and curve are kept, as evidence of why)."""
    from lightning.pytorch.callbacks import Callback  # lazy: Lightning (report and status import this module)

    class Pruning(Callback):
        reason: str | None = None

        def on_validation_end(self, trainer, pl_module) -> None:
            value = trainer.callback_metrics.get(monitor)
            if trainer.sanity_checking or value is None:
                return
            value = float(value)
            trial.report(value if math.isfinite(value) else float("nan"), step=trainer.current_epoch)
            if trial.should_prune():
                self.reason = f"pruned after epoch {trainer.current_epoch + 1} ({monitor} {value:.4g})"

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if self.reason:
                raise optuna().TrialPruned(self.reason)

    return Pruning()


def trial_dir(study: Study, cell: str, number: int) -> Path:
    return Path(study.study_dir) / cell / "trials" / f"t{number:03d}"


def trial_run(study: Study, cell: str, number: int, params: dict | None = None) -> Run:
    """A trial as a run of the study (its folder, the cell's settings, the trial's as tuning values)."""
    return Run(-1, cell, study.seeds[0], str(trial_dir(study, cell, number)), study.cells[cell], dict(params or {}))


def search_lock(study: Study):
    return folder_lock(study.study_dir, SEARCH_LOCK)


def _reap_cell(study: Study, cell: str, ostudy) -> list[int]:
    """The cell's trials whose process died (the journal says running, nobody holds the trial's claim), failed in
    the journal as interrupted (the search trains their settings again) and marked killed in their trackers;
    returns their numbers. Call under :func:`search_lock`, which a process holds from asking for a trial until it
    has claimed it."""
    o = optuna()
    out = []
    for t in ostudy.get_trials(deepcopy=False, states=(o.trial.TrialState.RUNNING,)):
        run = trial_run(study, cell, t.number, t.params)
        taken = take_dead(claim_path(run), Path(run.dir))
        if taken is None:  # alive
            continue
        claim, lock, owner = taken
        try:
            # Optuna has no public setter for another trial's attributes: the storage's own method, before the tell
            ostudy._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)  # noqa: SLF001
            ostudy.tell(t.number, state=o.trial.TrialState.FAIL)
            mark_killed(study, run, owner or "unknown", trial=t.number)
            out.append(t.number)
        finally:
            if lock is not None:
                lock.release()
            claim.release()
    return out


def reap_trials(study: Study) -> list[tuple[str, int]]:
    """Every cell's trials whose process died (:func:`_reap_cell`), as (cell, number); nothing without a journal.
    Writes nothing (takes no lock) when every running trial is held by a live process."""
    if not (Path(study.study_dir) / JOURNAL).is_file():
        return []
    o = optuna()
    out = []
    for cell in study.cells:
        try:
            ostudy = o.load_study(study_name=cell, storage=storage(study))
        except KeyError:  # no trial of this cell yet
            continue
        running = ostudy.get_trials(deepcopy=False, states=(o.trial.TrialState.RUNNING,))
        if len(live_trials(study, cell, ostudy)) < len(running):
            with search_lock(study):
                out += [(cell, n) for n in _reap_cell(study, cell, ostudy)]
    return out


def live_trials(study: Study, cell: str, ostudy) -> list[int]:
    """The cell's trials a live process is training now (running in the journal, their claim held)."""
    o = optuna()
    return [t.number for t in ostudy.get_trials(deepcopy=False, states=(o.trial.TrialState.RUNNING,))
            if busy_with(trial_run(study, cell, t.number))]


def claim_trial(study: Study, cell: str, ostudy, space: dict, trials: int, seed: int, one: bool):
    """The cell's next trial and its claim, or None once its budget is spent (finished and live trials). Under
    :func:`search_lock`: trials of dead processes are failed first and their settings queued again, then Optuna is
    asked and the new trial claimed before any other process can look at it."""
    o = optuna()
    with search_lock(study):
        for number in _reap_cell(study, cell, ostudy):
            say(f"{cell}: trial {number} was left running by a process that died; marked killed")
        for number in retry_interrupted(ostudy):
            say(f"{cell}: trial {number} was interrupted; its settings are trained again as a new trial")
        if len(_counted(ostudy)) >= trials:
            return None
        if not one:  # an array task keeps the seed it was given: tasks draw at once, from the same journal
            ostudy.sampler = o.samplers.TPESampler(seed=draw_seed(seed, ostudy))
        trial = ostudy.ask(space)
        return trial, Claim(claim_path(trial_run(study, cell, trial.number)), attempts=50)


def run_trial(study: Study, cell: str, ostudy, trial, monitor: str) -> str:
    """Train one claimed trial (valid only), tell Optuna the result and the trackers how it ended; returns its
    state."""
    from covfuse.training.run import fit_run  # lazy: Lightning and torch (report and status import this module)

    o = optuna()
    run = trial_run(study, cell, trial.number, trial.params)
    folder = Path(run.dir)
    where = f"{cell} trial {trial.number}"
    retry = trial.user_attrs.get(RETRY_OF)
    say(f"{where}: training ({', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in trial.params.items())})"
        + (f", the settings of interrupted trial {retry}" if retry is not None else ""))
    context = tracking.study_context(study.name, study.study_dir, cell, {**run.settings, **run.tune},
                                     trial=trial.number)
    config = None
    try:
        config = parse_run(study.base, run)
        fit_run(config, overwrite=(folder / "config.yaml").is_file(), callbacks=[pruning_callback(trial, monitor)],
                splits=EVAL, tracking=context)
    except o.TrialPruned as exc:
        ostudy.tell(trial, state=o.trial.TrialState.PRUNED)
        tracking.end_run(folder, "pruned", config, context)
        say(f"{where}: {exc}")
        return "pruned"
    except (RunInterrupted, KeyboardInterrupt) as exc:  # Ctrl-C, SIGTERM: the rerun retries these settings
        trial.set_user_attr(INTERRUPTED, True)
        ostudy.tell(trial, state=o.trial.TrialState.FAIL)
        tracking.end_run(folder, "interrupted", config, context)
        if isinstance(exc, RunInterrupted):
            raise RunInterrupted(f"search of study {study.name} interrupted in {where} (Optuna counts it failed; "
                                 f"the rerun trains its settings again as a new trial, finished trials are kept); "
                                 f"continue with: {again(study)}", exc.code) from None
        raise
    except Exception as exc:  # noqa: BLE001 (a diverging trial may not even write its metrics: try another)
        ostudy.tell(trial, state=o.trial.TrialState.FAIL)
        tracking.end_run(folder, "failed", config, context)
        reason = brief(exc, 300)
        say(f"{where}: FAILED ({reason}); it does not count against the budget")
        return f"failed: {reason}"
    key = OBJECTIVE[monitor][0]
    value = json.loads((folder / "metrics.json").read_text())["valid"].get(key)
    if value is None or not math.isfinite(value):
        ostudy.tell(trial, state=o.trial.TrialState.FAIL)
        tracking.end_run(folder, "failed", config, context)
        say(f"{where}: FAILED (valid {key} is {value})")
        return f"failed: valid {key} is {value}"
    ostudy.tell(trial, float(value))
    tracking.end_run(folder, "complete", config, context)
    say(f"{where}: valid {key} {value:.4f}")
    return "complete"


def search_cell(study: Study, cell: str, space: dict, trials: int, seed: int, monitor: str, *,
                one: bool = False) -> bool:
    """Claim and train the cell's trials until its budget is spent (``one``: at most one, as a SLURM array task
    does); returns whether the search of the cell is over (no live trial left, here or in another process)."""
    o = optuna()
    ostudy = _cell_study(study, cell, seed, OBJECTIVE[monitor][1])
    while True:
        claimed = claim_trial(study, cell, ostudy, space, trials, seed, one)
        if claimed is None:
            with search_lock(study):  # spent: over once no other process trains one of its trials
                for number in _reap_cell(study, cell, ostudy):
                    say(f"{cell}: trial {number} was left running by a process that died; marked killed")
                if live_trials(study, cell, ostudy):
                    return False
                if len(_counted(ostudy)) >= trials:
                    return True
            continue  # a trial of another process failed meanwhile: its budget is free again
        trial, claim = claimed
        with claim:
            outcome = run_trial(study, cell, ostudy, trial, monitor)
        if one:
            return False
        if outcome.startswith("failed") and len(ostudy.get_trials(deepcopy=False)) >= MAX_ATTEMPTS * trials:
            raise UserError(f"cell {cell}: {MAX_ATTEMPTS * trials} trials were tried and too many failed (last: "
                            f"{outcome[8:]}); check the --tune space and the base config with a plain covfuse fit")


def summarise(study: Study, space_text: dict, trials: int, seed: int, monitor: str) -> dict:
    """search.json: per cell the budget, the trials (settings, state, value) and the best settings."""
    o = optuna()
    key, direction = OBJECTIVE[monitor]
    cells = {}
    for cell in study.cells:
        ostudy = _cell_study(study, cell, seed, direction)
        rows = []
        for t in ostudy.get_trials(deepcopy=False):
            rows.append({"number": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
                         "epochs": len(t.intermediate_values), "interrupted": bool(t.user_attrs.get(INTERRUPTED)),
                         "retry_of": t.user_attrs.get(RETRY_OF)})
        done = [r["value"] for r in rows if r["state"] == "complete"]
        best = None
        if done:
            b = ostudy.best_trial
            best = {"number": b.number, "params": b.params, "value": b.value,
                    "dir": str(trial_dir(study, cell, b.number).relative_to(study.study_dir))}
        counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
        counts["interrupted"] = sum(r["interrupted"] for r in rows)  # of the failed ones; retried
        cells[cell] = {"budget": trials, **counts, "best": best, "trials": rows,
                       "spread": ({"min": min(done), "median": float(_median(done)), "max": max(done)} if done else None)}
    return {"sampler": "TPE", "seed": seed, "pruner": f"median (after {PRUNER_STARTUP} finished trials)",
            "objective": f"valid {key}", "direction": direction, "space": space_text, "trials": trials, "cells": cells}


def _median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def monitor_of(study: Study) -> str:
    monitors = {cfgmod.default_monitor(study.run_config(r)) for r in study.runs}
    if len(monitors) != 1:
        raise UserError(f"--search optuna: the cells monitor different metrics ({', '.join(sorted(monitors))}); "
                        "set one --monitor for the study")
    return monitors.pop()


def run_search(study: Study, space_text: dict[str, list], trials: int, *, seed: int = 0, task: int | None = None,
               overwrite: bool = False) -> dict:
    """Write study.json, run every cell's trials (or only task ``task``: one trial of cell task // trials), then
    train each cell's study runs with its best settings (a cell whose last trial another process still trains is
    left to that process); returns search.json's content. Runs and trials whose process died are marked killed
    first; the MLflow study and cell runs end with the command."""
    if trials < 1:
        raise UserError(f"--trials must be at least 1, got {trials}")
    space = parse_space(space_text)
    monitor = monitor_of(study)
    root = Path(study.study_dir)
    if task is not None and not 0 <= task < trials * len(study.cells):
        raise UserError(f"--task {task} is outside this search's tasks 0..{trials * len(study.cells) - 1} "
                        f"({len(study.cells)} cells x {trials} trials)")
    if task is None or not (root / "study.json").is_file():
        write_study(grown(study))  # a study grows; finished runs are never dropped
    reap(study)  # study runs and trials whose process died: marked killed before anything else happens
    reap_trials(study)
    prepare_tracking(study, study.runs)
    try:
        if task is not None:  # array tasks start at once: each needs its own seed, or all would draw the same first
            # settings; trial k of every cell shares one, so the methods still see the same random start
            search_cell(study, list(study.cells)[task // trials], space, trials,
                        seed * 1_000_003 + task % trials + 1, monitor, one=True)
            return {}
        over = {}
        for cell in study.cells:
            over[cell] = search_cell(study, cell, space, trials, seed, monitor)
            summary = write_summary(study, space_text, trials, seed, monitor)
        busy = []
        for run in study.runs:
            if not over[run.cell]:  # the process training its last trial trains the cell's runs after it
                busy.append(str(Path(run.dir).relative_to(root)))
                continue
            best = summary["cells"][run.cell]["best"]
            if best is None:
                raise UserError(f"cell {run.cell}: every trial of the search was pruned or failed; widen the --tune "
                                "space or raise --trials")
            if run_one(study, replace(run, tune=dict(best["params"]))) == "busy":
                busy.append(str(Path(run.dir).relative_to(root)))
        if busy:
            say(f"{len(busy)} run(s) left to the other process(es) searching or training them, not waited for: "
                f"{', '.join(busy)}; `covfuse status {study.study_dir}` shows them")
    finally:
        end_parents(study)  # the MLflow study and cell runs end once no run or trial of theirs is left running
    return summary


def write_summary(study: Study, space_text: dict, trials: int, seed: int, monitor: str) -> dict:
    """search.json from the journal as it is now, under the search lock (so the last process to write it writes
    the newest); returns it."""
    with search_lock(study):
        summary = summarise(study, space_text, trials, seed, monitor)
        atomic_write_text(Path(study.study_dir) / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


def read_summary(study: Study) -> dict | None:
    path = Path(study.study_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def space_words(space_text: dict[str, list]) -> str:
    """The search space in words, its numbers as written: ``optim.lr log-uniform from 1e-4 to 1e-2; optim.weight_decay
    one of 0, 0.01``."""
    parts = []
    for key, values in space_text.items():
        values = [values] if not isinstance(values, list) else values
        match = _RANGE.match(values[0]) if len(values) == 1 and isinstance(values[0], str) else None
        if match:
            lo, hi = _number(match.group(2)), _number(match.group(3))
            kind = "log-uniform" if match.group(1) else ("integers" if isinstance(lo, int) and isinstance(hi, int)
                                                         else "uniform")
            parts.append(f"{key} {kind} from {match.group(2)} to {match.group(3)}")  # as the user wrote them
        else:
            parts.append(f"{key} one of {', '.join(v if isinstance(v, str) else sig(v) for v in values)}")
    return "; ".join(parts)


def markdown(summary: dict) -> list[str]:
    """The report's tuning table: each cell's budget, best settings and the spread of the valid score over trials."""
    lines = ["## Search (equal budget per method)", "",
             f"Optuna {summary['sampler']} (seed {summary['seed']}), pruner {summary['pruner']}, over "
             f"{md_escape(space_words(summary['space']))}; {summary['trials']} trials per cell on the validation split "
             f"({summary['objective']}, {summary['direction']}); the best trial's settings were scored once on test.", "",
             f"| setting | budget | complete / pruned / failed | best settings | best {summary['objective']} | "
             "min / median / max over complete trials |", "|---|---|---|---|---|---|"]
    for cell, c in summary["cells"].items():
        best = c["best"]
        spread = c["spread"]
        lines.append(f"| {md_escape(cell)} | {c['budget']} | {c['complete']} / {c['pruned']} / {c['fail']} | "
                     f"{md_escape(settings_text(best['params'])) if best else DASH} | {sig(best['value']) if best else DASH} | "
                     + (f"{sig(spread['min'])} / {sig(spread['median'])} / {sig(spread['max'])}" if spread else DASH)
                     + " |")
    return lines + [""]
