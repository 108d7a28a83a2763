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
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from covfuse.errors import UserError
from covfuse.io import atomic_write_text
from covfuse.training import config as cfgmod

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
        from covfuse.errors import suggest

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


def write_study(study: Study, *, overwrite: bool = False) -> None:
    """Write study.json; an existing study folder must hold the same study (or pass --overwrite)."""
    folder = Path(study.study_dir)
    path = folder / STUDY_FILE
    record = _record(study)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        same = isinstance(old, dict) and all(old.get(k) == record[k] for k in ("kind", "base", "cells", "runs"))
        if not same and not overwrite:
            raise UserError(f"{folder} holds a different study; pass --overwrite to replace it or choose another --name")
        if not same:
            shutil.rmtree(folder)
    elif folder.exists() and any(not p.name.startswith(".") for p in folder.iterdir()):  # hidden markers are fine
        if not overwrite:
            raise UserError(f"{folder} exists and is not a covfuse study (no {STUDY_FILE}); choose another --name")
        raise UserError(f"{folder} is not a covfuse study (no {STUDY_FILE}); refusing to delete it")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def say(text: str) -> None:
    print(f"[sweep] {text}", flush=True)


def run_one(study: Study, run: Run) -> str:
    """Train one run unless it is done; resume it when interrupted. Returns what was done."""
    from covfuse.training.run import fit_run, summary

    folder = Path(run.dir)
    status = run_status(folder)
    where = f"[{run.index + 1}/{len(study.runs)}] {folder.relative_to(study.study_dir)}"
    if status == "done":
        say(f"{where}: done already, skipped")
        return "skipped"
    config = study.run_config(run)
    from covfuse.training.tracking import study_context  # issue 20: trackers tag the run with its study and cell
    context = study_context(study.name, study.study_dir, run.cell, {**run.settings, **run.tune})
    if status == "interrupted":
        say(f"{where}: resuming from its last checkpoint")
        fit_run(config, resume=True, tracking=context)
    else:
        say(f"{where}: training")
        fit_run(config, overwrite=status == "started" and (folder / "config.yaml").is_file(), tracking=context)
    say(f"{where}: {summary(folder)}")
    return "resumed" if status == "interrupted" else "trained"


def again(study: Study) -> str:
    return " ".join(study.argv) if study.argv else "the same covfuse sweep command"


def run_study(study: Study, *, task: int | None = None, overwrite: bool = False) -> dict[str, int]:
    """Write study.json and train every run (or only run ``task``); returns counts per outcome.

    A run that fails does not stop the others (a study is hours of work): the failures are logged
    and reported together at the end. An interrupt (Ctrl-C, SIGTERM) stops the study after the
    current run saved its checkpoint; the same command continues it.
    """
    import logging

    from covfuse.errors import RunInterrupted

    if task is not None and not 0 <= task < len(study.runs):
        raise UserError(f"--task {task} is outside this study's runs 0..{len(study.runs) - 1}")
    if task is None or not (Path(study.study_dir) / STUDY_FILE).is_file():
        write_study(study, overwrite=overwrite)
    counts = {"trained": 0, "resumed": 0, "skipped": 0, "failed": 0}
    failed: list[tuple[Run, str]] = []
    for run in ([study.runs[task]] if task is not None else study.runs):
        try:
            counts[run_one(study, run)] += 1
        except RunInterrupted as exc:
            raise RunInterrupted(f"study {study.name} interrupted in {run.dir} (checkpoint saved); "
                                 f"continue it with: {again(study)}", exc.code) from None
        except Exception as exc:  # noqa: BLE001 (one broken run must not cost the study the others)
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            if not isinstance(exc, UserError):  # a bug, not a mistake: keep the traceback in the log
                logging.getLogger("covfuse.studies").error("run %s failed: %s", run.dir, reason, exc_info=True)
            say(f"[{run.index + 1}/{len(study.runs)}] {Path(run.dir).relative_to(study.study_dir)}: FAILED ({reason})")
            failed.append((run, reason))
            counts["failed"] += 1
    if failed:
        run, reason = failed[0]
        raise UserError(f"{len(failed)} run(s) of study {study.name} failed (first: {run.dir}: {reason}); "
                        f"fix the cause and run {again(study)} again: finished runs are kept")
    return counts
