"""A study: cells (settings) x seeds (x folds, x tuning values), each a normal run folder.

``plan_study`` expands a base config and a grid into runs ``<study>/<cell>/s<seed>/`` (k-fold CV:
``s<seed>-fold<k>``; with a tuning search: ``<cell>/<tuned setting>/s<seed>``) and ``run_study``
trains them one after the other in this process, skipping finished runs and resuming interrupted
ones, so running a sweep twice costs nothing. ``study.json`` records cells, settings and runs; the
report (:mod:`covfuse.studies.report`) reads only that file and the run folders. A SLURM array task
(:mod:`covfuse.studies.slurm`) re-plans the same study from the same arguments and runs one run.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from covfuse.errors import RunDiverged, RunInterrupted, UserError, suggest
from covfuse.io import atomic_write_text
from covfuse.training import config as cfgmod
from covfuse.training.lock import LOCK_NAME, Claim, RunBusy, holder
from covfuse.training.tracking import finish_study, study_context

STUDY_FILE = "study.json"
STUDY_SECTION = "sweep"
"""Top-level key of a config file that holds the study itself (grid, cells, seeds, tune, baseline)."""


@dataclass
class Run:
    """One run of a study: its cell, seed, fold, tuning values, folder and parsed config."""

    index: int
    cell: str
    seed: int
    dir: str
    settings: dict[str, Any]
    tune: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None


@dataclass
class Study:
    """What ``study.json`` holds: enough for the report and for re-running any run."""

    name: str
    kind: str  # "sweep" or "cv"
    study_dir: str
    base: list[str]  # config arguments every run shares (--config ..., overrides)
    cells: dict[str, dict[str, Any]]  # cell name -> settings (dotted keys)
    seeds: list[int]
    tune: dict[str, list[Any]]
    folds: int
    baseline: str
    runs: list[Run]
    argv: list[str]  # the command's arguments, for SLURM tasks and the record

    def run_config(self, run: Run) -> cfgmod.RunConfig:
        return parse_run(self.base, run)


# -- values and names ------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets belong to the value."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    out.append(current.strip())
    if any(v == "" for v in out):
        raise UserError(f"empty value in {text!r}; write KEY=V1,V2,...")
    return out


def parse_assignments(items: Sequence[str], flag: str) -> dict[str, list[Any]]:
    """``["model.fusion=a,b", ...]`` -> ``{"model.fusion": ["a", "b"]}`` (values kept as written)."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not values.strip():
            raise UserError(f"{flag} {item!r}: write {flag} KEY=V1,V2,... (e.g. {flag} model.fusion=image-only,hybrid)")
        if key in out:
            raise UserError(f"{flag} names {key!r} twice; give all its values at once")
        out[key] = split_values(values)
    return out


def cli_value(value: Any) -> str:
    """A value as a command-line string that jsonargparse reads back to the same value."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_label(v) for v in value) or "none"
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        return "+".join(v.strip() for v in value[1:-1].split(",") if v.strip()) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def setting_names(keys: Sequence[str]) -> dict[str, str]:
    """Short names for dotted keys: the last part (``model.fusion`` -> ``fusion``) unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def cell_name(settings: dict[str, Any], short: dict[str, str]) -> str:
    """``{"model.fusion": "hybrid", "optim.lr": 0.003}`` -> ``fusion=hybrid,lr=0.003`` (a plain folder name)."""
    if not settings:
        return "base"
    name = ",".join(f"{short.get(k, k)}={_label(v)}" for k, v in settings.items())
    return re.sub(r"[^A-Za-z0-9._=+,-]", "-", name)


# -- config files ------------------------------------------------------------------------------
def read_base(configs: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """``--config`` arguments for every run, and the merged ``sweep:`` sections of the files.

    A file's ``sweep:`` section describes the study (``grid``, ``cells``, ``seeds``, ``tune``,
    ``baseline``); the rest of the file is a normal run config, passed on as YAML text.
    """
    args: list[str] = []
    study: dict[str, Any] = {}
    for path in configs:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: not valid YAML ({' '.join(str(exc).split())[:120]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{p}: a config file must be a mapping of keys to values")
        section = data.pop(STUDY_SECTION, None)
        if section is not None:
            if not isinstance(section, dict):
                raise UserError(f"{p}: '{STUDY_SECTION}:' must be a mapping (grid, cells, seeds, tune, baseline)")
            unknown = set(section) - {"grid", "cells", "seeds", "tune", "baseline"}
            if unknown:
                raise UserError(f"{p}: unknown key {sorted(unknown)[0]!r} in '{STUDY_SECTION}:' "
                                "(known: grid, cells, seeds, tune, baseline)")
            study.update(section)
            args += flatten(data)  # the file's run settings, as flags in the file's place
        else:
            args += ["--config", str(p)]
    return args, study


def flatten(values: dict[str, Any]) -> list[str]:
    """A run config mapping as flags: ``{"optim": {"lr": 0.01}}`` -> ``["--optim.lr", "0.01"]``."""
    sections = {key.split(".", 1)[0] for key in cfgmod.config_keys() if "." in key}  # data, model, optim, trainer
    out: list[str] = []
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            for sub, v in value.items():
                out += [f"--{key}.{sub}", cli_value(v)]
        else:
            out += [f"--{key}", cli_value(value)]
    return out


def _dotted(mapping: dict, where: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise UserError(f"{where} must map setting keys (e.g. model.fusion) to values")
    return {str(k): v for k, v in mapping.items()}


def parse_run(base: Sequence[str], run: Run) -> cfgmod.RunConfig:
    """The RunConfig of one run: base config, then cell and tuning settings, then seed/fold/folder."""
    args = list(base)
    for key, value in {**run.settings, **run.tune}.items():
        args += [f"--{key}", cli_value(value)]
    folder = Path(run.dir)
    args += ["--seed", str(run.seed), "--name", folder.name, "--runs_dir", str(folder.parent)]
    if run.fold is not None:
        args += ["--data.fold", str(run.fold)]
    return cfgmod.parse(args, prog="covfuse sweep")[0]


# -- planning ----------------------------------------------------------------------------------
def plan_study(*, name: str, configs: Sequence[str], runs_dir: str | Path = "runs", grid: Sequence[str] = (),
               seeds: Sequence[int] | None = None, tune: Sequence[str] = (), overrides: Sequence[str] = (),
               folds: int = 0, baseline: str | None = None, cells: dict[str, dict] | None = None,
               study_dir: str | Path | None = None, argv: Sequence[str] = (), check_data: bool = True) -> Study:
    """Expand configs, grid, explicit cells, seeds, folds and tuning values into a :class:`Study`.

    Every run's config is parsed here, so a misspelt key or a bad value fails before anything runs.
    """
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$", name):
        raise UserError(f"study name {name!r} must be a plain folder name (letters, digits, . _ = + , -)")
    if not configs:
        raise UserError("a study needs a base config: pass --config FILE.yaml")
    base, section = read_base(configs)
    base += list(overrides)
    grid_values = {**{k: list(v) if isinstance(v, list) else [v] for k, v in _dotted(section.get("grid", {}), "sweep.grid").items()},
                   **parse_assignments(grid, "--grid")}
    tune_values = {**{k: list(v) if isinstance(v, list) else [v] for k, v in _dotted(section.get("tune", {}), "sweep.tune").items()},
                   **parse_assignments(tune, "--tune")}
    explicit = cells if cells is not None else section.get("cells")
    seeds = list(seeds) if seeds else [int(s) for s in section.get("seeds", [0])]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed: {seeds}")
    if folds and folds < 2:
        raise UserError(f"--folds must be at least 2, got {folds}")
    if folds and tune_values:
        raise UserError("--tune picks settings on the validation split, which k-fold CV uses for scoring; "
                        "tune in a sweep first, then run cv with the chosen settings")

    # cells: explicit ones (name -> settings) times the Cartesian grid
    keys = list(grid_values)
    combos = [dict(zip(keys, values)) for values in itertools.product(*grid_values.values())] or [{}]
    base_cells = ({str(n): _dotted(s or {}, f"sweep.cells.{n}") for n, s in explicit.items()}
                  if explicit else {"": {}})
    short = setting_names(keys)
    study_cells: dict[str, dict[str, Any]] = {}
    for prefix, fixed in base_cells.items():
        for combo in combos:
            label = ",".join(p for p in (prefix, cell_name(combo, short) if combo else "") if p) or "base"
            label = re.sub(r"[^A-Za-z0-9._=+,-]", "-", label)
            if label in study_cells:
                raise UserError(f"two cells would both be named {label!r}; give the cells distinct names")
            study_cells[label] = {**fixed, **combo}
    if baseline is None:
        baseline = section.get("baseline") or next(iter(study_cells))
    if baseline not in study_cells:
        raise UserError(f"baseline {baseline!r} is not a cell of this study{suggest(baseline, study_cells)}; "
                        f"cells: {', '.join(study_cells)}")

    study_dir = Path(study_dir) if study_dir is not None else Path(runs_dir) / name
    tune_short = setting_names(list(tune_values))
    tune_combos = [dict(zip(tune_values, v)) for v in itertools.product(*tune_values.values())] or [{}]
    runs: list[Run] = []
    for label, settings in study_cells.items():
        for t in tune_combos:
            for seed in seeds:
                for fold in (range(folds) if folds else [None]):
                    leaf = f"s{seed}" + (f"-fold{fold}" if fold is not None else "")
                    folder = study_dir / label / (cell_name(t, tune_short) if t else "") / leaf
                    runs.append(Run(len(runs), label, seed, str(folder), settings, t, fold))
    if folds:
        base += ["--data.folds", str(folds)]
    study = Study(name, "cv" if folds else "sweep", str(study_dir), base, study_cells, seeds, tune_values,
                  folds, baseline, runs, list(argv))
    roots = set()
    for run in runs:  # every config parses (unknown keys, bad values) before anything runs
        roots.add(study.run_config(run).data.root)
    for root in sorted(roots) if check_data else ():  # the commonest mistake, caught before anything is written
        if not root or not Path(root).exists():
            raise UserError(f"data.root {root!r}: no such file or folder; pass --data.root DIR (or a volume manifest CSV)")
    return study


# -- state and execution -------------------------------------------------------------------------
def run_status(run_dir: Path) -> str:
    """done (metrics.json with test results), interrupted (a last.ckpt to resume), started, or new."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            if "test" in json.loads(metrics.read_text()):
                return "done"
        except (OSError, ValueError):
            pass
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return "interrupted"
    return "started" if run_dir.exists() else "new"


def _record(study: Study) -> dict:
    data = asdict(study)
    data["runs"] = [{**asdict(r), "dir": str(Path(r.dir).relative_to(study.study_dir))} for r in study.runs]
    data.pop("study_dir")
    return data


def load_study(study: str | Path, runs_dir: str | Path = "runs") -> Study:
    """A study from its folder or its name under ``runs_dir``."""
    for candidate in (Path(study), Path(runs_dir) / str(study)):
        path = candidate / STUDY_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                runs = [Run(**{**r, "dir": str(candidate / r["dir"])}) for r in data.pop("runs")]
                return Study(study_dir=str(candidate), runs=runs, **data)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise UserError(f"{path}: not a readable study file ({exc})") from None
    raise UserError(f"no study {str(study)!r}: neither {study}/{STUDY_FILE} nor {Path(runs_dir) / str(study)}/{STUDY_FILE} "
                    "exists; run `covfuse sweep` or `covfuse cv` first")


# -- growing a study ------------------------------------------------------------------------------
# Keys that say how or where a run trains, not what it learns: a change of these never makes a
# finished run "different" (the report recomputes its own intervals, so bootstrap is one of them).
RUNTIME_KEYS = ("name", "runs_dir", "bootstrap", "data.num_workers", "data.cache", "data.eval_batch_size",
                "trainer.accelerator", "trainer.progress", "trainer.progress_every", "trainer.summary")


def dotted_config(mapping: dict) -> dict[str, Any]:
    """A run config mapping with its sections' keys dotted: ``{"data": {"root": x}}`` -> ``{"data.root": x}``."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key in ("data", "model", "optim", "trainer"):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def changed_settings(run_dir: Path, config: cfgmod.RunConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose value in ``run_dir/config.yaml`` differs from ``config`` (old, new); {} when none or no file.

    A key the saved file lacks (written before the key existed) counts as its default."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    new = dotted_config(cfgmod.to_dict(config))
    if not isinstance(saved, dict):
        return {"config.yaml": ("unreadable", "this study's settings")}
    old, defaults = dotted_config(saved), dotted_config(cfgmod.to_dict(cfgmod.RunConfig()))
    if old.get("data.root") and new.get("data.root") and os.path.isabs(str(old["data.root"])):
        # a run records data.root absolute: the same place given relative is no change
        new["data.root"] = os.path.abspath(str(new["data.root"]))
    return {k: (old.get(k, defaults.get(k)), v) for k, v in new.items()
            if not k.startswith(RUNTIME_KEYS) and old.get(k, defaults.get(k)) != v}


def describe_changes(changes: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """``optim.lr 0.001 -> 0.003, model.fusion hybrid -> film``."""
    parts = [f"{k} {cli_value(a)} -> {cli_value(b)}" for k, (a, b) in list(changes.items())[:limit]]
    return ", ".join(parts) + (f" (+{len(changes) - limit} more)" if len(changes) > limit else "")


def merge_study(old: Study, new: Study) -> Study:
    """The study grown by this command: every run of the recorded study plus the command's new ones.

    Runs are never dropped (a finished run is kept and reported); the command's base config,
    baseline and arguments win, so runs whose settings they change are found by :func:`assess`.
    """
    if old.kind != new.kind:
        raise UserError(f"{new.study_dir} holds a {old.kind} study and this command makes a {new.kind}; "
                        "choose another --name")
    if old.folds != new.folds:
        raise UserError(f"{new.study_dir} was planned with data.folds {old.folds} -> {new.folds} here; folds set which "
                        f"samples each run scores, so a study keeps them: pass --folds {old.folds} or choose another --name")
    dirs = {r.dir for r in new.runs}
    runs = list(new.runs) + [r for r in old.runs if r.dir not in dirs]
    runs = [Run(**{**asdict(r), "index": i}) for i, r in enumerate(runs)]
    cells = {**old.cells, **new.cells}
    tune = {k: list(dict.fromkeys([*old.tune.get(k, []), *new.tune.get(k, [])])) for k in {**old.tune, **new.tune}}
    seeds = sorted(set(old.seeds) | set(new.seeds))
    return Study(new.name, new.kind, new.study_dir, new.base, cells, seeds, tune, new.folds, new.baseline, runs, new.argv)


def grown(study: Study) -> Study:
    """``study`` merged with the one recorded in its folder, if any (what the command will act on)."""
    folder = Path(study.study_dir)
    if (folder / STUDY_FILE).is_file():
        return merge_study(load_study(folder), study)
    if folder.exists() and folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
        raise UserError(f"{folder} exists and is not a covfuse study (no {STUDY_FILE}); choose another --name")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, not a study folder; choose another --name")
    return study


def write_study(study: Study) -> None:
    """Write study.json (the grown study: see :func:`grown`)."""
    folder = Path(study.study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STUDY_FILE, json.dumps(_record(study), indent=2) + "\n")


# -- what each run needs ---------------------------------------------------------------------------
def claim_path(run: Run) -> Path:
    """Beside the run folder (hidden), so a run not started yet has no folder."""
    folder = Path(run.dir)
    return folder.parent / f".{folder.name}.claim"


def failure_path(run: Run) -> Path:
    folder = Path(run.dir)
    return folder.parent / f".{folder.name}.failed"


def busy_with(run: Run) -> str | None:
    """Who trains ``run`` now (a sweep's claim, or any command's run lock), or None."""
    return holder(claim_path(run)) or holder(Path(run.dir) / LOCK_NAME)


@dataclass
class Action:
    """What a command does with one run, and why: train, skip, resume, replace, refuse or busy."""

    run: Run
    what: str
    reason: str
    changes: dict = field(default_factory=dict)


def assess(study: Study, run: Run, *, overwrite: bool = False, config: cfgmod.RunConfig | None = None,
           check_busy: bool = True) -> Action:
    """The truth about one run: what the real command will do with it (``--dry-run`` prints this)."""
    owner = busy_with(run) if check_busy else None
    if owner:
        return Action(run, "busy", f"being trained by another process ({owner}); skipped")
    config = config or study.run_config(run)
    folder = Path(run.dir)
    status = run_status(folder)
    changes = changed_settings(folder, config)
    if changes:
        if overwrite:
            return Action(run, "replace", f"{status}, settings changed ({describe_changes(changes)}): --overwrite "
                          "retrains it", changes)
        return Action(run, "refuse", f"{status} with other settings: {describe_changes(changes)}", changes)
    if status == "done":
        return Action(run, "skip", "done already")
    if status == "interrupted":
        return Action(run, "resume", "interrupted: continues from its last checkpoint")
    if status == "started":
        return Action(run, "train", "started before its first checkpoint: trains from the beginning")
    return Action(run, "train", "new")


def refusal(study: Study, actions: Sequence[Action], other: str = "choose another --name") -> UserError | None:
    """One line naming the runs whose settings changed and the keys (old -> new), or None."""
    refused = [a for a in actions if a.what == "refuse"]
    if not refused:
        return None
    first = refused[0]
    keys = list(dict.fromkeys(k for a in refused for k in a.changes))
    where = Path(first.run.dir).relative_to(study.study_dir)
    more = f" and {len(refused) - 1} more run(s)" if len(refused) > 1 else ""
    return UserError(f"{len(refused)} run(s) of study {study.name} were trained with other settings "
                     f"({where}{more}: {describe_changes(first.changes)}; keys that differ: {', '.join(keys)}); "
                     f"restore them, {other}, or pass --overwrite to retrain only those runs")


def say(text: str) -> None:
    print(f"[sweep] {text}", flush=True)


def _where(study: Study, run: Run) -> str:
    return f"[{run.index + 1}/{len(study.runs)}] {Path(run.dir).relative_to(study.study_dir)}"


def run_one(study: Study, run: Run, *, overwrite: bool = False) -> str:
    """Claim one run, then train, resume or skip it as :func:`assess` says. Returns what was done."""
    from covfuse.training.results import summary  # lazy: torch and Lightning (report and status import sweep)
    from covfuse.training.run import fit_run  # lazy: torch and Lightning (report and status import sweep)

    where = _where(study, run)
    try:
        claim = Claim(claim_path(run))
    except RunBusy as exc:
        say(f"{where}: being trained by another process ({exc.owner}); skipped")
        return "busy"
    with claim:
        config = study.run_config(run)
        # trackers tag the run with its study and cell
        context = study_context(study.name, study.study_dir, run.cell, {**run.settings, **run.tune})
        action = assess(study, run, overwrite=overwrite, config=config, check_busy=False)  # again, under our claim
        if action.what in ("skip", "busy"):
            say(f"{where}: {action.reason}")
            return "skipped" if action.what == "skip" else "busy"
        if action.what == "refuse":  # changed since the command checked: another process, or a hand edit
            raise UserError(f"{run.dir}: {action.reason}; pass --overwrite to retrain it")
        failure_path(run).unlink(missing_ok=True)
        try:
            if action.what == "resume":
                say(f"{where}: resuming from its last checkpoint")
                fit_run(config, resume=True, tracking=context)
            else:
                say(f"{where}: {'training' if action.what == 'train' else 'retraining (' + action.reason + ')'}")
                fit_run(config, overwrite=(Path(run.dir) / "config.yaml").is_file(), tracking=context)
        except RunBusy as exc:  # a `covfuse fit --resume` by hand holds the run
            say(f"{where}: being trained by another process ({exc.owner}); skipped")
            return "busy"
        except Exception as exc:
            if not isinstance(exc, RunInterrupted):  # interrupted is resumable, not failed
                atomic_write_text(failure_path(run), (" ".join(str(exc).split())[:300] or type(exc).__name__) + "\n")
            raise
        say(f"{where}: {summary(Path(run.dir))}")
        return {"resume": "resumed", "replace": "replaced"}.get(action.what, "trained")


def again(study: Study) -> str:
    return shlex.join(study.argv) if study.argv else "the same covfuse sweep command"


def prepare_study(study: Study, *, overwrite: bool = False, task: int | None = None,
                  other: str = "choose another --name") -> tuple[Study, list[Action]]:
    """The grown study and the action for each run this command touches; refuses (before anything is
    written) when a run's settings changed without --overwrite."""
    study = grown(study)
    if task is not None and not 0 <= task < len(study.runs):
        raise UserError(f"--task {task} is outside this study's runs 0..{len(study.runs) - 1}")
    runs = [study.runs[task]] if task is not None else study.runs
    actions = [assess(study, run, overwrite=overwrite) for run in runs]
    error = refusal(study, actions, other)
    if error is not None:
        raise error
    return study, actions


def run_study(study: Study, *, task: int | None = None, overwrite: bool = False,
              other: str = "choose another --name") -> dict[str, Any]:
    """Grow study.json and train every run that needs it (or only run ``task``); returns counts per outcome
    (trained, resumed, replaced, skipped, busy, failed) and ``busy_runs``.

    A run that fails does not stop the others (a study is hours of work): the failures are logged
    and reported together at the end. A run another process is training is skipped and listed.
    An interrupt (Ctrl-C, SIGTERM) stops the study after the current run saved its checkpoint; the
    same command continues it.
    """
    study, actions = prepare_study(study, overwrite=overwrite, task=task, other=other)
    if task is None or not (Path(study.study_dir) / STUDY_FILE).is_file():
        write_study(study)
    counts: dict[str, Any] = {"trained": 0, "resumed": 0, "replaced": 0, "skipped": 0, "busy": 0, "failed": 0}
    busy: list[str] = []
    failed: list[tuple[Run, str]] = []
    for action in actions:
        run = action.run
        try:
            outcome = run_one(study, run, overwrite=overwrite)
            counts[outcome] += 1
            if outcome == "busy":
                busy.append(str(Path(run.dir).relative_to(study.study_dir)))
        except RunInterrupted as exc:
            raise RunInterrupted(f"study {study.name} interrupted in {run.dir} (checkpoint saved); "
                                 f"continue it with: {again(study)}", exc.code) from None
        except Exception as exc:  # noqa: BLE001 (one broken run must not cost the study the others)
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            if not isinstance(exc, (UserError, RunDiverged)):  # a bug, not a mistake: keep the traceback in the log
                logging.getLogger("covfuse.studies").error("run %s failed: %s", run.dir, reason, exc_info=True)
            say(f"{_where(study, run)}: FAILED ({reason})")
            failed.append((run, reason))
            counts["failed"] += 1
    counts["busy_runs"] = busy
    if task is None and not busy and not failed:
        finish_study(Path(study.study_dir))  # the MLflow study and cell runs, once every run has finished
    if busy:
        say(f"{len(busy)} run(s) being trained by another process, not waited for: {', '.join(busy)}; "
            f"`covfuse status {study.study_dir}` shows them")
    if failed:
        run, reason = failed[0]
        raise UserError(f"{len(failed)} run(s) of study {study.name} failed (first: {run.dir}: {reason}); "
                        f"fix the cause and run {again(study)} again: finished runs are kept")
    return counts
