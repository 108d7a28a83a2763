"""`covfuse report STUDY`: one row per cell, compared with a baseline cell on the same people.

Per cell: mean ± sd of the metric over its runs (seeds, or seeds x folds), a pooled 95% CI that
resamples people (cluster bootstrap over identities/subjects of the run-averaged metric), the
difference from the baseline with a paired cluster-bootstrap CI and p-value, a test across runs
(paired t over seeds; Nadeau-Bengio corrected over k folds), Holm-adjusted p-values and a verdict.
Written to ``<study>/report.md``, ``report.json`` (**contract** shape), ``report.csv`` and
``figures/``. Made of the runs that finished (the others are named, their cells marked); a number that
cannot be computed is null with its reason (— and a footnote in the markdown and HTML) and gets no
verdict; the numbers' formats live in :mod:`covfuse.studies.format`.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.errors import UserError, suggest
from covfuse.io import atomic_write_text, save_figure
from covfuse.studies.format import (
    DASH, Notes, ci_text, csv_number, json_safe, md_escape, num_text, p_text, plural, sd_text, settings_text, shown, sig,
)
from covfuse.studies.search import markdown as search_markdown
from covfuse.studies.search import read_summary
from covfuse.studies.stats import (
    Draws, clustered_mcnemar, holm, paired_difference, pooled_interval, score_draws, seed_test,
)
from covfuse.studies.status import run_state
from covfuse.studies.sweep import Run, Study, run_status
from covfuse.training import clinical_plots
from covfuse.training.config import load as load_config
from covfuse.training.clinical import parse_threshold
from covfuse.training.curves import read_metrics_csv, smooth
from covfuse.training.metrics import (
    CLINICAL_SCORES, MULTICLASS_PROBABILITY_SCORES, PRIMARY, SUBGROUP_STATS, THRESHOLD_SCORES, check_metric,
    missing_reason, score_bounds, task_scores,
)
from covfuse.training.tasks import IDEAL, LOWER_IS_BETTER, direction, distance_from_best, scored_as

ALPHA = 0.05
ASSUMPTIONS = [
    "**CI** (per cell): cluster bootstrap over people (identity / subject) of the metric averaged over the "
    "cell's runs; it reflects which people happened to be in the evaluated split, with the trained models fixed. "
    "A cell of one run draws that run's own resamples (its bootstrap count and seed), so its interval is the one "
    "in its metrics.json.",
    "**Difference CI and bootstrap p**: both cells scored on the same people, resampled jointly; bootstrap "
    "standard error with a t distribution on (people - 1) degrees of freedom and the G/(G-1) small-sample factor.",
    "**Across-run test**: paired t-test of the per-run differences (same seed, same fold); over k folds with the "
    "Nadeau-Bengio correction, because the folds' training sets overlap. It reflects training randomness.",
    "**p** (the column Holm adjusts): with 3 or more runs per cell, the larger of the bootstrap p and the "
    "across-run p (a difference must hold over people *and* over training runs); with fewer runs, the bootstrap p.",
    f"**Verdict**: `better` / `worse` (for {', '.join(sorted(LOWER_IS_BETTER - {'loss'}))}, lower is better) when the Holm-adjusted p < 0.05 (over all cells compared with the baseline), "
    f"else `no evidence`; for {' and '.join(f'{k} (best at {v:g})' for k, v in IDEAL.items())}, `differs`; "
    "no verdict where a number is missing. McNemar counts, where shown, assume independent images and are "
    "descriptive; the clustered McNemar (Durkalski 2003) does not.",
    "**—**: a number that cannot be computed (its footnote says why; report.json has it as null with a "
    "`<key>_reason`); for the baseline's own difference and p, and for the SD of a cell with one run.",
]


@dataclass
class CellData:
    """A cell's runs and their predictions on the reported split, aligned to one id order."""

    name: str
    settings: dict
    runs: list[Run]
    tuned: dict | None
    ids: np.ndarray
    groups: np.ndarray
    labels: np.ndarray
    probs: np.ndarray  # (replicates, N): one row per seed
    per_run: dict[tuple[int, int | None], float]  # (seed, fold) -> metric of that run on its own split
    per_run_sizes: dict[tuple[int, int | None], int]
    task: str = "binary"
    references: list | None = None  # survival: each row's training-split reference (None: CV, or older runs)
    thresholds: np.ndarray | float = 0.5  # binary: each run's decision threshold per sample (replicates, N)
    threshold_rule: str = "0.5"  # binary: metrics.threshold of the cell's runs
    notes: list[str] = field(default_factory=list)  # finished runs left out (a CV seed without all its folds)
    own: tuple[int, int] | None = None  # a one-run cell: (resamples, seed) of its own interval


ALSO = {"survival": ("c_index", "ibs", "td_auc"), "binary": ("auroc", *CLINICAL_SCORES),
        "multiclass": MULTICLASS_PROBABILITY_SCORES}
"""A report shows these beside its metric, each with a pooled CI and compared with the baseline
(discrimination, calibration and the threshold's sensitivity, specificity, PPV and NPV)."""


def run_reference(run_dir: Path):
    """A survival run's training-split reference (survival_baseline.json), or None for runs written before it."""
    from covfuse.training.survival_reference import BASELINE_FILE, Reference  # lazy: torch (survival studies only)

    return Reference.load(run_dir) if (Path(run_dir) / BASELINE_FILE).is_file() else None


def run_task(run_dir: Path) -> str:
    """The task of a finished run (binary, multiclass, regression, survival), from its metrics.json."""
    path = Path(run_dir) / "metrics.json"
    return json.loads(path.read_text()).get("task", "binary") if path.is_file() else "binary"


def read_predictions(run_dir: Path, split: str, task: str = "binary") -> dict[str, np.ndarray]:
    """ids, groups, labels and per-sample outputs of one split from a run's predictions.csv: the
    ``probability`` column of a binary run, the ``probability_<class>`` columns (N, C) of a multi-class
    run, ``risk`` with (time, event) labels of a survival run, the ``prediction`` column (the value) of a
    regression run (:mod:`covfuse.training.tasks`)."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        raise UserError(f"{path}: missing; the run has not finished (run the study again to finish it)")
    entry = scored_as(task)
    columns = entry.output_columns(json.loads((Path(run_dir) / "metrics.json").read_text()).get("classes") or []
                                   if entry.per_class else [])
    ids, groups, labels, outputs = [], [], [], []

    def number(row: dict, column: str, line: int) -> float:
        try:
            value = float(row[column])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise UserError(f"{path} line {line}: {column} is {row[column]!r}, not a finite number; covfuse writes only "
                            "finite predictions, so the file was changed or damaged: restore it or rerun that run")
        return value

    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            if row["split"] == split:
                ids.append(row["id"])
                groups.append(row.get("group") or row["id"])  # older runs without groups: one per image
                label = [number(row, column, line) for column in entry.label_columns]
                labels.append(label if len(label) > 1 else label[0])
                values = [number(row, column, line) for column in columns]
                outputs.append(values if entry.per_class else values[0])
    order = np.argsort(ids, kind="stable")
    return {k: np.asarray(v)[order] for k, v in
            (("id", ids), ("group", groups), ("label", labels), ("output", outputs))}


def _metric(labels, outputs, metric: str, task: str, reference=None, threshold=0.5) -> float:
    return float(task_scores(task, labels, outputs, names=[metric], reference=reference, threshold=threshold)[metric][0])


def run_threshold(run: Run) -> dict:
    """A binary run's decision threshold from its metrics.json (``{"rule", "value"}``; 0.5 for runs written before)."""
    return _metrics_json(run).get("threshold") or {"rule": "0.5", "value": 0.5}


def verdict(metric: str, difference: float, p_adjusted: float) -> str:
    """``better`` / ``worse`` in the metric's direction (:func:`covfuse.training.tasks.direction`), ``differs``
    for a metric with an ideal value inside its range, at Holm-adjusted p < ALPHA; else ``no evidence``."""
    if not p_adjusted < ALPHA:
        return "no evidence"
    rule = direction(metric)
    return "differs" if rule == "ideal" else "better" if (difference < 0) == (rule == "min") else "worse"


def _metrics_json(run: Run) -> dict:
    return json.loads((Path(run.dir) / "metrics.json").read_text())


def select_tuned(runs: Sequence[Run], tuned_grid: dict, metric: str) -> tuple[list[Run], dict | None]:
    """With a tuning grid, the runs (of one cell) of the setting with the best mean valid metric; a
    setting whose runs have no valid metric ranks last."""
    runs = list(runs)
    if not tuned_grid:
        return runs, None
    by_setting: dict[str, list[Run]] = {}
    for r in runs:
        by_setting.setdefault(json.dumps(r.tune, sort_keys=True), []).append(r)
    valid = {}
    for k, rs in by_setting.items():
        values = [_metrics_json(r).get("valid", {}).get(metric) for r in rs]
        valid[k] = float(np.mean(values)) if all(v is not None for v in values) else float("nan")
    best = min(valid, key=lambda k: (not math.isfinite(valid[k]),
                                     distance_from_best(metric, valid[k]) if math.isfinite(valid[k]) else 0.0))
    return by_setting[best], {"chosen": json.loads(best),
                              "valid_" + metric: {k: round(v, 4) if math.isfinite(v) else None for k, v in valid.items()}}


def own_resamples(study: Study, runs: Sequence[Run], unit: str) -> tuple[int, int] | None:
    """(bootstrap resamples, seed) of a one-run cell's own metrics.json interval, when it resampled the
    same unit: the report then draws the same resamples, so that run has one interval wherever it is
    shown. None for cells of several runs (their pooled interval is the report's own)."""
    if len(runs) != 1:
        return None
    saved = Path(runs[0].dir) / "config.yaml"  # the run's own resolved config: the report may run from anywhere
    config = load_config(saved) if saved.is_file() else study.run_config(runs[0])
    if config.bootstrap < 2 or (config.bootstrap_unit == "group") != (unit == "group"):
        return None
    return int(config.bootstrap), int(config.seed)


def load_cell(study: Study, cell: str, metric: str, task: str = "binary", runs: Sequence[Run] | None = None,
              unit: str = "group") -> CellData | None:
    """The cell's finished ``runs`` (default: all of the study's) read back; None when none is usable.
    In cross-validation a seed counts only with all its folds (its out-of-fold predictions are then
    every sample once); the others are named in the cell's ``notes``."""
    with_reference = scored_as(task).reference  # survival: each run's training-split reference
    runs = [r for r in (study.runs if runs is None else runs) if r.cell == cell]
    notes: list[str] = []
    if study.kind == "cv" and study.folds:
        folds_of: dict[int, list[Run]] = {}  # seed -> its finished folds
        for r in runs:
            folds_of.setdefault(r.seed, []).append(r)
        for seed, rs in sorted(folds_of.items()):
            if len(rs) < study.folds:
                notes.append(f"seed {seed}: {plural(len(rs), 'fold')} of {study.folds} finished, left out")
        runs = [r for r in runs if len(folds_of[r.seed]) >= study.folds]
    runs, tuned = select_tuned(runs, study.tune, metric)
    if not runs:
        return None
    split = "valid" if study.kind == "cv" else "test"
    by_seed: dict[int, list[dict]] = {}
    refs: dict[int, list] = {}
    per_run, sizes, rules = {}, {}, set()
    for r in runs:
        pred = read_predictions(Path(r.dir), split, task)
        threshold = run_threshold(r) if task == "binary" else {"rule": "0.5", "value": 0.5}
        rules.add(threshold["rule"])
        pred["threshold"] = np.full(len(pred["id"]), float(threshold["value"]))
        by_seed.setdefault(r.seed, []).append(pred)
        ref = run_reference(Path(r.dir)) if with_reference else None
        refs.setdefault(r.seed, []).append(ref)
        per_run[(r.seed, r.fold)] = _metric(pred["label"], pred["output"], metric, task, ref, pred["threshold"])
        sizes[(r.seed, r.fold)] = len(pred["id"])
    rows, thresholds, reference = [], [], None
    for seed in sorted(by_seed):
        parts = by_seed[seed]  # CV: the folds' held-out parts together are the out-of-fold predictions
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        order = np.argsort(merged["id"], kind="stable")
        merged = {k: v[order] for k, v in merged.items()}
        if len(np.unique(merged["id"])) != len(merged["id"]):
            raise UserError(f"cell {cell}, seed {seed}: a sample is predicted twice; the folds overlap")
        if reference is None:
            reference = merged
        elif not np.array_equal(reference["id"], merged["id"]):
            raise UserError(f"cell {cell}: seed {seed} was evaluated on other samples than seed {min(by_seed)}")
        rows.append(merged["output"])
        thresholds.append(merged["threshold"])
    # one reference per row; CV rows merge folds trained on different splits, so no single reference fits
    references = ([refs[seed][0] for seed in sorted(by_seed)]
                  if with_reference and all(len(v) == 1 and v[0] is not None for v in refs.values()) else None)
    return CellData(cell, study.cells[cell], runs, tuned, reference["id"], reference["group"], reference["label"],
                    np.stack(rows), per_run, sizes, task, references, np.stack(thresholds), ", ".join(sorted(rules)),
                    notes, own_resamples(study, runs, unit))


def finished_runs(study: Study) -> tuple[list[Run], list[dict]]:
    """The runs that finished (the report is made of them) and, for each other run, what it is: its
    folder, cell, seed, fold, state (failed / interrupted / running / pending, as ``covfuse status``
    says) and error."""
    done, missing = [], []
    for r in study.runs:
        if run_status(Path(r.dir)) == "done":
            done.append(r)
            continue
        state = run_state(r)
        missing.append({"run": str(Path(r.dir).relative_to(study.study_dir)), "cell": r.cell, "seed": r.seed,
                        "fold": r.fold, "state": state["state"], "error": state["error"]})
    if not done:
        raise UserError(f"{len(study.runs)} of {len(study.runs)} runs of study {study.name} are not finished: "
                        f"nothing to report yet; run `{' '.join(study.argv) or 'covfuse sweep ...'}` to train them "
                        f"(`covfuse status {study.study_dir}` shows where they stand)")
    return done, missing


def study_task(runs: Sequence[Run], name: str) -> str:
    """The one task (binary, multiclass, regression, survival) all finished runs of a study share."""
    tasks = {run_task(Path(r.dir)) for r in runs}
    if len(tasks) > 1:
        raise UserError(f"study {name} mixes tasks ({', '.join(sorted(tasks))}); compare runs with the same head")
    return tasks.pop() if tasks else "binary"


def null_reason(c: CellData | None, name: str, split: str) -> str:
    """Why a cell has no value of score ``name``: no finished run, a cross-validation without one training
    reference (IBS, td-AUC), or what its runs' metrics.json say; the words of
    :func:`covfuse.training.metrics.missing_reason` otherwise."""
    if c is None:
        return "no finished run in this cell"
    if c.task == "survival" and name in ("ibs", "td_auc") and c.references is None:
        return ("scored against each run's training-split baseline, and the pooled predictions merge runs trained "
                "on different training splits (cross-validation folds) or written before survival_baseline.json")
    said = []
    for r in c.runs:
        why = _metrics_json(r).get(split, {}).get(f"{name}_reason")
        if why and why not in said:
            said.append(why)
    if said:
        return "; ".join(said)
    return missing_reason(c.task, name, c.labels, c.references[0] if c.references else None)


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def empty_row(name: str, settings: dict, reason: str) -> dict:
    """The row of a cell with no finished run: every number null, each with its reason."""
    return {"setting": name, "settings": settings, "n_runs": 0, "mean": None, "sd": None, "ci": [None, None],
            "estimate": None, "clusters": None, "difference": None, "difference_ci": [None, None], "p_value": None,
            "bootstrap_p": None, "seed_test": None, "p_adjusted": None, "verdict": None, "gaps": {},
            "estimate_reason": reason, "mean_reason": reason, "difference_reason": reason}


def build_report(study: Study, *, baseline: str | None = None, metric: str | None = None, n_boot: int = 2000,
                 seed: int = 0, unit: str = "group") -> dict:
    """The report as a dict: the **contract** keys (baseline, metric, rows) plus details.

    ``metric`` defaults to the task's primary score (accuracy; balanced accuracy for multi-class; MAE
    for regression, where lower is better; C-index for survival). ``unit="image"`` resamples images
    instead of people: only for data without repeated people. Made of the runs that finished: the others are listed in
    ``missing`` (and each row's ``missing_runs``); a number that cannot be computed is null with a
    ``<key>_reason``, and gets no verdict.
    """
    if unit not in ("group", "image"):
        raise UserError(f"unknown resampling unit {unit!r}; choose group or image")
    baseline = baseline or study.baseline
    if baseline not in study.cells:
        raise UserError(f"baseline {baseline!r} is not a cell of study {study.name}{suggest(baseline, study.cells)}; "
                        f"cells: {', '.join(study.cells)}")
    done, missing = finished_runs(study)
    task = study_task(done, study.name)
    metric = check_metric(metric or PRIMARY[task], task)
    split = "valid" if study.kind == "cv" else "test"
    cells = {name: load_cell(study, name, metric, task, done, unit) for name in study.cells}
    loaded = [c for c in cells.values() if c is not None]
    if not loaded:
        raise UserError(f"study {study.name}: no cell has a complete set of finished runs to report; "
                        f"run `{' '.join(study.argv) or 'covfuse sweep ...'}` to finish them")
    if unit == "image":
        for c in loaded:
            c.groups = c.ids
    base = cells[baseline]
    first = base if base is not None else loaded[0]
    for c in loaded:
        if not np.array_equal(c.ids, first.ids):
            raise UserError(f"cells {c.name} and {first.name} were evaluated on different samples; "
                            "compare cells of one study on one data folder")
    pool = len(first.ids)
    shared, own = draw_cells(cells, [metric, *(n for n in ALSO.get(task, ()) if n != metric)], n_boot=n_boot, seed=seed)
    rows = [empty_row(name, study.cells[name], null_reason(None, metric, split)) if c is None
            else cell_row(c, own[name], metric, split, n_boot=n_boot, seed=seed) for name, c in cells.items()]
    base_row = rows[list(cells).index(baseline)]
    for row, c in zip(rows, cells.values()):
        if c is not None:
            compare(study, row, c, base_row, base, shared, metric, split, pool=pool)
        row["missing_runs"] = [m["run"] for m in missing if m["cell"] == row["setting"]]
        if c is not None and c.notes:
            row["notes"] = c.notes
    compared = [r for r in rows if r["setting"] != baseline and r["p_value"] is not None]
    for r, adj in zip(compared, holm([r["p_value"] for r in compared])):
        r["p_adjusted"] = adj
        r["verdict"] = verdict(metric, r["difference"], adj)
    for r in rows:
        if r["setting"] != baseline and r["verdict"] is None:
            r["verdict_reason"] = r.get("difference_reason", "no difference to test")
    base_row = next(r for r in rows if r["setting"] == baseline)
    base_row.update(verdict="baseline")
    also_scores(rows, cells, baseline, metric, task, split, shared, own)
    search = read_summary(study)  # an Optuna search's tuning table
    curves = clinical_plots.study_curves({name: (c.labels, c.probs, c.thresholds) for name, c in cells.items()
                                          if c is not None}, task)
    out = {"study": study.name, "kind": study.kind, "baseline": baseline, "metric": metric, "task": task, "unit": unit,
           "split": "out-of-fold (valid of each fold)" if study.kind == "cv" else "test",
           "samples": pool, "clusters": int(len(np.unique(first.groups))), "seeds": study.seeds, "folds": study.folds,
           "n_boot": n_boot, "rows": rows, "missing": missing, **({"curves": curves} if curves else {}),
           **({"search": search} if search else {})}
    out["figures"] = drawn_figures(out, study)
    return out


def _usable(c: CellData, name: str) -> bool:
    """Whether score ``name`` can be drawn for cell ``c``: a survival run's IBS and td-AUC need its reference."""
    return not (c.task == "survival" and name in ("ibs", "td_auc") and c.references is None)


def draw_cells(cells: dict[str, CellData | None], names: Sequence[str], *, n_boot: int, seed: int
               ) -> tuple[dict[str, Draws], dict[str, Draws]]:
    """Each cell's ``names`` (the first, the report's metric, and those others it can score, :func:`_usable`) on the report's resamples, scored once
    (:func:`score_draws`): ``shared`` pairs every cell with the baseline on the same people; ``own`` gives
    each cell's interval, from a one-run cell's own resamples when it has them (:func:`own_resamples`)."""
    def draw(c: CellData, boots: int, draw_seed: int) -> Draws:
        usable = [names[0], *(n for n in names[1:] if _usable(c, n))]  # the report's metric, always (null: why)
        return score_draws(c.labels, c.probs, c.groups, usable, n_boot=boots, seed=draw_seed, task=c.task,
                           references=c.references, threshold=c.thresholds)

    shared = {cell: draw(c, n_boot, seed) for cell, c in cells.items() if c is not None}
    own = {cell: shared[cell] if c.own in (None, (n_boot, seed)) else draw(c, *c.own)
           for cell, c in cells.items() if c is not None}
    return shared, own


def cell_row(c: CellData, drawn: Draws, metric: str, split: str, *, n_boot: int, seed: int) -> dict:
    """One cell's row before the comparison: mean ± sd over its runs and the pooled estimate with its CI
    from ``drawn`` (a one-run cell: that run's own resamples, :func:`own_resamples`); nulls with their
    reasons; a binary cell's decision thresholds."""
    boots, draw_seed = c.own or (n_boot, seed)
    pooled = {**pooled_interval(drawn, metric), "clusters": drawn.clusters}
    values = list(c.per_run.values())
    complete = all(math.isfinite(v) for v in values)
    row: dict = {"setting": c.name, "settings": c.settings, "n_runs": len(c.runs),
                 "mean": float(np.mean(values)) if complete else None,
                 "sd": float(np.std(values, ddof=1)) if complete and len(values) > 1 else None,
                 "ci": pooled["ci"], "estimate": _finite(pooled["estimate"]), "clusters": pooled["clusters"],
                 "resamples": {"n_boot": boots, "seed": draw_seed,
                               "from": "the run's own (as in its metrics.json)" if c.own else "the report's"},
                 "difference": None, "difference_ci": [None, None], "p_value": None, "bootstrap_p": None,
                 "seed_test": None, "p_adjusted": None, "verdict": None}
    if row["estimate"] is None:
        row["estimate_reason"] = null_reason(c, metric, split)
    if not complete:
        missing = sum(not math.isfinite(v) for v in values)
        row["mean_reason"] = (null_reason(c, metric, split) if missing == len(values) else
                              f"{plural(missing, 'run')} of {len(values)} without {metric}: {null_reason(c, metric, split)}")
    if row["sd"] is None:
        row["sd_reason"] = row.get("mean_reason", "one run: a spread across runs needs two")
    if c.tuned:
        row["tuned"] = c.tuned
    if c.task == "binary":
        row["threshold"] = {"rule": c.threshold_rule, "values": sorted({float(t) for t in c.thresholds[:, 0]})}
    row["gaps"] = _mean_gaps(c.runs, split, SUBGROUP_STATS[c.task][0])
    return row


def compare(study: Study, row: dict, c: CellData, base_row: dict, base: CellData | None, shared: dict[str, Draws],
            metric: str, split: str, *, pool: int) -> None:
    """``row`` gets the paired difference from the baseline (CI, bootstrap and across-run tests, p; the draws of
    :func:`draw_cells` on the same people), or null with the reason: it is the baseline, or either side has no value."""
    if row is base_row:
        row["difference_reason"] = "the baseline"
        return
    if row["estimate"] is None:
        row["difference_reason"] = row["estimate_reason"]
        return
    if base is None or base_row["estimate"] is None:
        row["difference_reason"] = f"no {metric} for the baseline: {base_row.get('estimate_reason')}"
        return
    paired = paired_difference(shared[c.name], shared[base.name], metric)
    common = sorted(set(c.per_run) & set(base.per_run), key=lambda k: (k[0], -1 if k[1] is None else k[1]))
    diffs = [c.per_run[k] - base.per_run[k] for k in common]
    if study.kind == "cv" and common:
        n_test = float(np.mean([c.per_run_sizes[k] for k in common]))
        across = seed_test(diffs, n_train=pool - n_test, n_test=n_test)
    else:
        across = seed_test(diffs)
    p = paired["p_value"]
    if len(diffs) >= 3 and math.isfinite(across["p_value"]):
        p = max(p, across["p_value"])
    row.update(difference=_finite(paired["difference"]), difference_ci=paired["ci"], p_value=_finite(p),
               bootstrap_p=_finite(paired["p_value"]), seed_test=across)
    if row["p_value"] is None:
        row["difference_reason"] = "fewer than two bootstrap resamples where both cells have a value"
    if c.probs.shape[0] == 1 and base.probs.shape[0] == 1 and c.task == "binary":
        row["mcnemar_clustered"] = clustered_mcnemar(c.labels, c.probs[0], base.probs[0], c.groups,
                                                     threshold=c.thresholds[0], threshold_b=base.thresholds[0])


def also_scores(rows: list[dict], cells: dict[str, CellData | None], baseline: str, metric: str, task: str,
                split: str, shared: dict[str, Draws], own: dict[str, Draws]) -> None:
    """Each row's ``also``: the task's :data:`ALSO` scores other than the report's metric, each with a pooled CI
    and the paired difference from the baseline (CI, p, Holm over the compared cells of that score), people
    resampled as for the main metric and every score drawn from the same resamples (:func:`score_draws`; a
    one-run cell's interval: its own resamples). A number that cannot be computed is null with its reason
    (a cell without a finished run; a survival run's IBS and td-AUC without its training-split reference:
    CV, older runs)."""
    names = [n for n in ALSO.get(task, ()) if n != metric]
    for name in names:
        entries = {}
        for cell, c in cells.items():
            entry = {"estimate": None, "ci": [None, None], "difference": None, "difference_ci": [None, None],
                     "p_value": None}
            entries[cell] = entry
            if c is None:
                entry["estimate_reason"] = entry["difference_reason"] = null_reason(None, name, split)
                continue
            if not _usable(c, name):
                entry["estimate_reason"] = null_reason(c, name, split)
                continue
            pooled = pooled_interval(own[cell], name)
            entry.update(estimate=_finite(pooled["estimate"]), ci=pooled["ci"])
            if entry["estimate"] is None:
                entry["estimate_reason"] = null_reason(c, name, split)
        base_entry = entries[baseline]
        for cell, c in cells.items():
            entry = entries[cell]
            if cell == baseline:
                entry["difference_reason"] = "the baseline"
            elif "difference_reason" in entry:
                pass
            elif entry["estimate"] is None:
                entry["difference_reason"] = entry["estimate_reason"]
            elif base_entry["estimate"] is None:
                entry["difference_reason"] = f"no {name} for the baseline: {base_entry.get('estimate_reason')}"
            else:
                paired = paired_difference(shared[cell], shared[baseline], name)
                entry.update(difference=_finite(paired["difference"]), difference_ci=paired["ci"],
                             p_value=_finite(paired["p_value"]))
                if entry["p_value"] is None:
                    entry["difference_reason"] = "fewer than two bootstrap resamples where both cells have a value"
        compared = [cell for cell in cells if cell != baseline and entries[cell]["p_value"] is not None]
        for cell, adj in zip(compared, holm([entries[cell]["p_value"] for cell in compared])):
            entries[cell]["p_adjusted"] = adj
        for r in rows:
            r.setdefault("also", {})[name] = entries[r["setting"]]


ALSO_TITLES = {
    "survival": ("C-index, integrated Brier score and time-dependent AUC",
                 "Higher C and td-AUC are better, a lower IBS is better. IBS and td-AUC use each run's training-split "
                 "Breslow baseline and censoring distribution over its evaluation grid (docs/survival.md)."),
    "binary": ("Discrimination, calibration and the decision threshold",
               "AUROC and AUPRC (average precision): higher is better; Brier score and ECE (10 equal-width bins of "
               "the predicted probability): lower is better; calibration intercept (calibration-in-the-large) and "
               "slope (logistic recalibration): best at 0 and 1. Sensitivity, specificity, PPV and NPV at each run's "
               "threshold (below). Definitions: docs/studies.md, \"Reporting for a clinical journal\"."),
    "multiclass": ("Calibration and precision-recall (one-vs-rest)",
                   "AUPRC: the mean over the classes of each class's average precision against the rest (higher is "
                   "better); Brier: the multi-class Brier score, summed over the classes (0 to 2, lower is better); "
                   "ECE: of the top class's probability (10 equal-width bins; lower is better)."),
}
"""Each task's heading and reading of its :data:`ALSO` table."""


def also_names(report: dict) -> list[str]:
    """The scores of the report's ``also`` table: its metric, then the others of :data:`ALSO`."""
    rows = report["rows"]
    return [report["metric"], *rows[0]["also"]] if rows and rows[0].get("also") else []


def threshold_words(report: dict) -> str:
    """Which decision threshold each cell's runs used (binary reports), in words, for under the tables."""
    rows = [r for r in report["rows"] if r.get("threshold")]
    if not rows:
        return ""
    parts = [f"{r['setting']} {', '.join(f'{v:.4g}' for v in r['threshold']['values'])}"
             + ("" if _fixed(r["threshold"]["rule"]) else f" ({r['threshold']['rule']})") for r in rows]
    chosen = any(not _fixed(r["threshold"]["rule"]) for r in rows)
    text = ("Threshold-dependent scores (" + ", ".join(THRESHOLD_SCORES) + ") use each run's `metrics.threshold`"
            + (", chosen on its validation split" if chosen else "") + ": " + "; ".join(parts) + ".")
    if chosen and report.get("kind") == "cv":
        text += (" In a CV study the reported split is each fold's validation part, where the threshold was also "
                 "chosen: these scores are optimistic; use a fixed metrics.threshold to compare them.")
    return text


def _fixed(rule: str) -> bool:
    """Whether a cell's ``metrics.threshold`` (its runs' rules, comma-separated) is a fixed probability."""
    return all(parse_threshold(part)[0] == "fixed" for part in rule.split(", "))


def also_markdown(report: dict, notes: Notes) -> list[str]:
    """The ``also`` table, one row per score and cell: estimate with CI, difference from the baseline with CI,
    Holm-adjusted p."""
    names = also_names(report)
    if not names:
        return []
    title, reading = ALSO_TITLES[report.get("task", "binary")]
    base = report["baseline"]
    lines = [f"## {title}", "",
             "Each with a 95% CI that resamples people, and the paired difference from "
             f"{md_escape(base)} (95% CI; p Holm-adjusted over the compared cells of that score). {reading}", "",
             f"| score | setting | estimate [95% CI] | difference vs {md_escape(base)} [95% CI] | p (Holm) |",
             "|---|---|---|---|---|"]
    for n in names:
        for r in report["rows"]:
            e = also_entry(report, r, n)
            is_base = r["setting"] == base
            p = DASH if is_base or e.get("difference") is None else p_text(e.get("p_adjusted"))
            lines.append(f"| {n} | {md_escape(r['setting'])} | {estimate_text(e, notes, n)} | "
                         f"{difference_text(e, notes, n, is_base)} | {p} |")
    lines += ["", *[f"{mark} {md_escape(reason)}" + "  " for mark, reason in notes.flush()]]
    words = threshold_words(report)
    return lines + ["", *([md_escape(words).replace("\\`", "`"), ""] if words else [])]


def also_entry(report: dict, row: dict, name: str) -> dict:
    """Estimate, CI, difference (CI), Holm p and the reasons of the nulls of ``name`` for one report row
    (the main metric or an ``also``)."""
    if name == report["metric"]:
        keys = ("estimate", "ci", "difference", "difference_ci", "p_adjusted", "estimate_reason", "difference_reason")
        return {k: row[k] for k in keys if k in row}
    return row["also"][name]


def _mean_gaps(runs: Sequence[Run], split: str, stat: str = "accuracy") -> dict[str, float]:
    """Subgroup gaps of ``stat`` (max - min over a covariate's values), averaged over runs."""
    collected: dict[str, list[float]] = {}
    for r in runs:
        for key, gap in _metrics_json(r).get(split, {}).get("gaps", {}).items():
            if gap.get(stat) is not None:
                collected.setdefault(key, []).append(gap[stat])
    return {k: float(np.mean(v)) for k, v in collected.items()}


# -- output ----------------------------------------------------------------------------------------
def estimate_text(entry: dict, notes: Notes, name: str = "") -> str:
    """An estimate with its CI, or — with the reason's footnote."""
    return shown(entry.get("estimate"), entry.get("estimate_reason"), notes) + ci_text(entry.get("ci"))


def difference_text(entry: dict, notes: Notes, name: str = "", is_base: bool = False) -> str:
    """A difference from the baseline with its CI; — for the baseline itself, — with a footnote where missing."""
    if is_base:
        return DASH
    if entry.get("difference") is None:
        return notes.dash(entry.get("difference_reason"))
    return num_text(entry["difference"], sign=True) + ci_text(entry.get("difference_ci"), sign=True)


def verdict_text(row: dict, notes: Notes) -> str:
    """``better`` / ``worse`` / ``no evidence`` / ``baseline``; — with a footnote where nothing could be tested."""
    return row["verdict"] if row.get("verdict") else notes.dash(row.get("verdict_reason"))


def affected(row: dict) -> bool:
    """Whether a row is made of fewer runs than its cell has: runs missing, or finished runs left out."""
    return bool(row.get("missing_runs") or row.get("notes"))


def missing_lines(report: dict) -> list[str]:
    """The runs a report was made without, one line each: folder, state and error (also the left-out runs)."""
    out = []
    for m in report.get("missing", []):
        out.append(f"{m['run']}: {m['state']}" + (f" ({m['error']})" if m.get("error") else ""))
    for r in report["rows"]:
        out += [f"{r['setting']}: {note}" for note in r.get("notes", [])]
    return out


def to_json(report: dict) -> str:
    return json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n"


CSV_COLUMNS = ("setting", "n_runs", "mean", "sd", "estimate", "ci_lo", "ci_hi", "difference", "difference_ci_lo",
               "difference_ci_hi", "p_value", "p_adjusted", "verdict", "notes", "missing_runs")
"""report.csv: the numbers of report.json's rows, written as report.json writes them (empty where null;
``notes`` gives the reasons of the empty cells, ``missing_runs`` the runs the row lacks)."""


def row_reasons(row: dict) -> str:
    """The reasons a row's null numbers have, as report.csv's ``notes`` cell: ``key: reason; ...``."""
    return "; ".join(f"{k[:-len('_reason')]}: {v}" for k, v in row.items() if k.endswith("_reason")
                     and v != "the baseline")


def to_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in report["rows"]:
        w.writerow([r["setting"], r["n_runs"], *(csv_number(r[k]) for k in ("mean", "sd", "estimate")),
                    *(csv_number(v) for v in r["ci"]), csv_number(r["difference"]),
                    *(csv_number(v) for v in r["difference_ci"]), csv_number(r["p_value"]),
                    csv_number(r["p_adjusted"]), r["verdict"] or "", row_reasons(r),
                    " ".join(r.get("missing_runs", []))])
    return out.getvalue()


def headline(report: dict, study: Study) -> str:
    """The report's first sentence (markdown and HTML alike): kind, cells, seeds, folds, metric, split, samples."""
    cells = plural(len(study.cells), "cell")
    folds = f", {plural(study.folds, 'fold')}" if study.folds else ""
    seeds = f"{'seed' if len(study.seeds) == 1 else 'seeds'} {', '.join(map(str, study.seeds))}"
    return (f"{'CV' if study.kind == 'cv' else 'Sweep'}: {cells}, {seeds}{folds}; {report['metric']} on the "
            f"{report['split']} split: {plural(report['samples'], 'sample')} of "
            f"{plural(report['clusters'], 'person', 'people')}.")


def to_markdown(report: dict, study: Study, *, context: Sequence[str] = ()) -> str:
    metric, base = report["metric"], report["baseline"]
    suffix = report_suffix(report)
    notes = Notes()
    base_args = " ".join(a if "\n" not in a else "<the study file's run settings>" for a in study.base)
    lines = [f"# Study {study.name}", "", *context, "" if context else None,
             f"{headline(report, study)} Baseline: **{md_escape(base)}**. Base config: "
             f"`{base_args.replace('`', chr(39))}`.", ""]
    if report.get("missing"):
        lines += [f"**Made of the runs that finished**: {plural(len(report['missing']), 'run')} of "
                  f"{len(study.runs)} missing (†: cells without all their runs; listed under "
                  "[Runs missing](#runs-missing)).", ""]
    lines += [f"| setting | runs | mean ± sd | pooled {metric} [95% CI] | difference vs {md_escape(base)} [95% CI] | p | "
              "p (Holm) | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    lines = [x for x in lines if x is not None]
    for r in report["rows"]:
        is_base = r["setting"] == base
        name = md_escape(r["setting"]) + (" †" if affected(r) else "")
        lines.append(f"| {name} | {r['n_runs']} | {shown(r['mean'], r.get('mean_reason'), notes)} ± {sd_text(r['sd'])} | "
                     f"{estimate_text(r, notes)} | {difference_text(r, notes, is_base=is_base)} | "
                     f"{DASH if is_base else p_text(r['p_value'])} | {DASH if is_base else p_text(r['p_adjusted'])} | "
                     f"{verdict_text(r, notes)} |")
    lines += ["", *[f"{mark} {md_escape(reason)}" + "  " for mark, reason in notes.flush()], ""]
    lines += also_markdown(report, notes)
    figures = report.get("figures", [])
    lines += [f"![differences](figures/forest{suffix}.png)" if "forest" in figures else None, "",
              f"![{metric}](figures/metric{suffix}.png)" if "metric" in figures else None, "",
              *clinical_markdown(report)]
    compared = [r for r in report["rows"] if r["setting"] != base and r["n_runs"]]
    if compared:
        lines += ["## Tests behind each row", "",
                  "| setting | bootstrap p | across runs (method: t, p) | clustered McNemar (a only / b only, p) |",
                  "|---|---|---|---|"]
        for r in compared:
            st = r["seed_test"]
            across = DASH if not st or st["t"] is None else f"{st['method']}: t = {st['t']:.2f}, p = {p_text(st['p_value'])}"
            mc = r.get("mcnemar_clustered")
            mcn = f"{mc['a_only']} / {mc['b_only']}, p = {p_text(mc['p_value'])}" if mc else DASH
            lines.append(f"| {md_escape(r['setting'])} | {p_text(r['bootstrap_p'])} | {across} | {mcn} |")
    lines = [x for x in lines if x is not None]
    lines += ["", "What each number assumes:", "", *[f"- {a}" for a in ASSUMPTIONS], ""]
    tuned = [r for r in report["rows"] if r.get("tuned")]
    if tuned:
        lines += ["## Equal tuning budget", "",
                  f"Every cell got the same search over {md_escape(grid_words(study.tune))}; "
                  f"the value with the best mean valid {metric} was kept, and test was scored once.", "",
                  "| setting | chosen | valid " + metric + " per value |", "|---|---|---|"]
        for r in tuned:
            chosen = settings_text(r["tuned"]["chosen"])
            per = "; ".join(settings_text(json.loads(k)) + f": {num_text(v)}" for k, v in r["tuned"][f"valid_{metric}"].items())
            lines.append(f"| {md_escape(r['setting'])} | {md_escape(chosen)} | {md_escape(per)} |")
        lines.append("")
    if report.get("search"):
        lines += search_markdown(report["search"])
    gap_keys = sorted({k for r in report["rows"] for k in r["gaps"]}, key=lambda k: ("&" in k, k))
    if gap_keys:
        stat = SUBGROUP_STATS[report.get("task", "binary")][0]
        lines += ["## Subgroup gaps", "", f"{stat} gap (largest minus smallest subgroup {stat}), mean over runs:", "",
                  "| setting | " + " | ".join(md_escape(k) for k in gap_keys) + " |", "|---|" + "---|" * len(gap_keys)]
        for r in report["rows"]:
            lines.append(f"| {md_escape(r['setting'])} | " + " | ".join(num_text(r["gaps"].get(k)) for k in gap_keys) + " |")
        lines += ["", "Per-group statistics and CIs: each run's metrics.json.", ""]
    if "loss_curves" in figures:
        lines += ["## Training curves", "", "![loss curves](figures/loss_curves.png)", ""]
    if report.get("missing") or any(r.get("notes") for r in report["rows"]):
        lines += ["## Runs missing", "", "The report is made of the finished runs; these are not in it "
                  f"(`covfuse status {study.study_dir}`; rerun the study's command to finish them):", "",
                  *[f"- {md_escape(line)}" for line in missing_lines(report)], ""]
    lines += ["## Runs", ""]
    root = Path(study.study_dir)
    for r in report["rows"]:
        cell_runs = [run for run in study.runs if run.cell == r["setting"]
                     and str(Path(run.dir).relative_to(root)) not in r.get("missing_runs", [])]
        links = ", ".join(f"[{md_escape(Path(run.dir).relative_to(root))}]({Path(run.dir).relative_to(root)}/metrics.json)"
                          for run in cell_runs) or DASH
        lines.append(f"- {md_escape(r['setting'])} ({md_escape(settings_text(r['settings']) or 'base config')}): {links}")
    return "\n".join(lines) + "\n"


CLINICAL_FIGURES = {"reliability": "Reliability diagram per method (runs pooled; bin counts below)",
                    "decision_curve": "Decision curve per method: net benefit against treat all and treat none"}
"""The study figures of :mod:`covfuse.training.clinical_plots` and their captions."""


def clinical_figures(report: dict) -> list[str]:
    """The names of the calibration and decision-curve figures the report has (``figures/<name>.png``)."""
    return list(clinical_plots.STUDY_FIGURES.get(report.get("task", "binary"), ())) if report.get("curves") else []


def clinical_markdown(report: dict) -> list[str]:
    """The calibration and decision-curve figures, embedded, with what they show."""
    names = [name for name in clinical_figures(report) if name in report.get("figures", [name])]
    if not names:
        return []
    lines = []
    for name in names:
        lines += [f"![{CLINICAL_FIGURES[name]}](figures/{name}.png)", ""]
    return lines


def grid_words(tune: dict) -> str:
    """A grid's tuning values in words: ``optim.lr one of 0.001, 0.003``."""
    return "; ".join(f"{k} one of {', '.join(sig(v) for v in (values if isinstance(values, list) else [values]))}"
                     for k, values in tune.items())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def compared_rows(report: dict) -> list[dict]:
    """The rows with a difference from the baseline (what the forest plot draws)."""
    return [r for r in report["rows"] if r["setting"] != report["baseline"] and r.get("difference") is not None]


def drawn_figures(report: dict, study: Study) -> list[str]:
    """The figures a report has, none of them empty: ``forest`` where some cell has a difference from the
    baseline (not for a baseline-only study), ``metric`` where some cell has an estimate, ``loss_curves``
    where some run has a metrics.csv."""
    out = []
    if compared_rows(report):
        out.append("forest")
    if any(r.get("estimate") is not None for r in report["rows"]):
        out.append("metric")
    if any((Path(r.dir) / "metrics.csv").is_file() for r in study.runs):
        out.append("loss_curves")
    return out + clinical_figures(report)


def plot_forest(report: dict, out: Path) -> Path:
    """Difference from the baseline with its 95% CI, one line per compared cell, coloured by verdict."""
    plt = _plt()
    rows = compared_rows(report)
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.4))
    colour = {"better": "C2", "worse": "C3", "differs": "C0", "no evidence": "C7"}
    for i, r in enumerate(rows):
        lo, hi = r["difference_ci"]
        c = colour.get(r["verdict"], "C7")
        if lo is not None:
            ax.plot([lo, hi], [i, i], color=c, lw=2.5)
        ax.plot(r["difference"], i, "o", color=c, ms=7)
        ax.text(1.01, i, f"{r['verdict'] or DASH} (p_Holm {p_text(r['p_adjusted'])})", transform=ax.get_yaxis_transform(),
                va="center", fontsize=8)
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(rows)), [r["setting"] for r in rows])
    ax.invert_yaxis()
    rule = direction(report["metric"])
    reading = ("lower is better: left of 0 favours the method" if rule == "min" else
               f"best at {IDEAL.get(report['metric'], 0):g}: 0 = no difference" if rule == "ideal" else
               "higher is better: right of 0 favours the method")
    ax.set_xlabel(f"{report['metric']} difference vs {report['baseline']} (95% CI, people resampled)\n{reading}")
    ax.grid(axis="x", alpha=0.3)
    return clinical_plots.save(fig, out)  # its texts in the PNG's Description too


def plot_metric(report: dict, out: Path, reference: dict[str, float] | None = None) -> Path:
    """The pooled metric per cell with its 95% CI (— for a cell without one); optional reference lines
    (e.g. Bayes accuracies)."""
    plt = _plt()
    rows = report["rows"]
    names = [r["setting"] for r in rows]
    est = np.array([np.nan if r["estimate"] is None else r["estimate"] for r in rows], dtype=float)
    ci = np.array([[np.nan, np.nan] if r["ci"][0] is None else r["ci"] for r in rows], dtype=float)
    err = np.nan_to_num(np.stack([est - ci[:, 0], ci[:, 1] - est]))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(rows)), 3.8))
    ax.bar(range(len(rows)), np.nan_to_num(est), yerr=err, capsize=5, color=[f"C{i % 10}" for i in range(len(rows))],
           alpha=0.85)
    for i, v in enumerate(est):
        ax.text(i, (v if math.isfinite(v) else 0.0) + err[1, i] + 0.01, num_text(v), ha="center", va="bottom", fontsize=8)
    for j, (label, value) in enumerate((reference or {}).items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{(j + 6) % 10}", label=f"{label} ({value:.3f})")
    if reference:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(rows)), names, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center",
                  fontsize=8)
    # bars start at zero (a bar's length is its value; a cut axis would exaggerate the differences)
    low = np.nanmin(ci[:, 0]) if np.isfinite(ci).any() else np.nanmin(est)
    if score_bounds(report["metric"]) == (0.0, 1.0):
        ax.set_ylim(0.0, 1.05)
    else:  # MAE, RMSE (target units) and R^2 have no fixed top
        high = np.nanmax(ci[:, 1]) if np.isfinite(ci).any() else np.nanmax(est)
        pad = 0.1 * (max(high, 0.0) - min(low, 0.0)) + 1e-6
        ax.set_ylim(min(0.0, low - pad), max(0.0, high) + 3 * pad)
    ax.set_ylabel(f"{report['metric']} (95% CI, people resampled)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_loss_curves(study: Study, out: Path) -> Path:
    """Smoothed training loss and validation loss of each cell's first run with a metrics.csv, one colour per cell."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, cell in enumerate(study.cells):
        path = next((Path(r.dir) / "metrics.csv" for r in study.runs
                     if r.cell == cell and (Path(r.dir) / "metrics.csv").is_file()), None)
        if path is None:
            continue
        rows = read_metrics_csv(path)
        train = [(r["step"], r["train/loss_step"]) for r in rows if "train/loss_step" in r]
        val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
        if train:
            steps, losses = zip(*train)
            ax.plot(steps, smooth(list(losses)), color=f"C{i % 10}", lw=1.6, label=f"{cell} train")
        if val:
            ax.plot(*zip(*val), "o--", color=f"C{i % 10}", ms=4, lw=1, label=f"{cell} valid")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("first run of each cell", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, out)


def report_suffix(report: dict) -> str:
    """'' for the task's default metric; ``-<metric>`` otherwise, so a report on another metric is
    written beside the default one instead of replacing it."""
    return "" if report["metric"] == PRIMARY.get(report.get("task", "binary")) else f"-{report['metric']}"


def figure_files(report: dict) -> dict[str, str]:
    """Each figure's file, relative to the study folder (``forest-<metric>.png`` beside ``forest.png``)."""
    s = report_suffix(report)
    return {"forest": f"figures/forest{s}.png", "metric": f"figures/metric{s}.png",
            "loss_curves": "figures/loss_curves.png",
            **{name: f"figures/{name}.png" for name in clinical_plots.STUDY_FIGURES.get(report.get("task", "binary"), ())}}


def report_files(report: dict) -> list[str]:
    """The files :func:`write_report` writes for ``report``, relative to the study folder."""
    s = report_suffix(report)
    files = figure_files(report)
    return [f"report{s}.md", f"report{s}.json", f"report{s}.csv",
            *(files[name] for name in files if name in report.get("figures", []))]


def write_report(study: Study, report: dict, *, context: Sequence[str] = (),
                 reference: dict[str, float] | None = None) -> Path:
    """report.md, report.json, report.csv and figures/ in the study folder (``report-<metric>.*`` for a
    metric other than the task's default); returns the markdown file. A figure the report does not have
    (:func:`drawn_figures`) is not drawn, and an older one of that name is removed."""
    root = Path(study.study_dir)
    files = figure_files(report)
    drawn = report.get("figures", [])
    draw = {"forest": lambda out: plot_forest(report, out), "metric": lambda out: plot_metric(report, out, reference),
            "loss_curves": lambda out: plot_loss_curves(study, out)}
    for name, file in files.items():
        if name not in drawn:
            (root / file).unlink(missing_ok=True)
        elif name in draw:
            draw[name](root / file)
    clinical_plots.study_figures(report, root / "figures")  # the clinical figures of drawn_figures, from ``curves``
    atomic_write_text(root / f"report{report_suffix(report)}.json", to_json(report))
    atomic_write_text(root / f"report{report_suffix(report)}.csv", to_csv(report))
    return atomic_write_text(root / f"report{report_suffix(report)}.md", to_markdown(report, study, context=context))
