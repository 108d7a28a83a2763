"""`covfuse report STUDY`: one row per cell, compared with a baseline cell on the same people.

Per cell: mean ± sd of the metric over its runs (seeds, or seeds x folds), a pooled 95% CI that
resamples people (cluster bootstrap over identities/subjects of the run-averaged metric), the
difference from the baseline with a paired cluster-bootstrap CI and p-value, a test across runs
(paired t over seeds; Nadeau-Bengio corrected over k folds), Holm-adjusted p-values and a verdict.
Written to ``<study>/report.md``, ``report.json`` (**contract** shape), ``report.csv`` and
``figures/``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.errors import UserError, suggest
from covfuse.io import atomic_write_text, save_figure
from covfuse.studies.format import ci_text, json_safe, md_escape, num_text, p_text, sd_text, settings_text, sig
from covfuse.studies.search import markdown as search_markdown
from covfuse.studies.search import read_summary
from covfuse.studies.stats import (
    cluster_bootstrap, clustered_mcnemar, holm, paired_cluster_bootstrap, paired_difference, pooled_interval,
    score_draws, seed_test,
)
from covfuse.studies.sweep import Run, Study, run_status
from covfuse.training import clinical_plots
from covfuse.training.clinical import parse_threshold
from covfuse.training.curves import read_metrics_csv, smooth
from covfuse.training.metrics import (
    CLINICAL_SCORES, MULTICLASS_PROBABILITY_SCORES, PRIMARY, SUBGROUP_STATS, THRESHOLD_SCORES, check_metric,
    score_bounds, task_scores,
)
from covfuse.training.tasks import IDEAL, LOWER_IS_BETTER, direction, distance_from_best, scored_as

ALPHA = 0.05
ASSUMPTIONS = [
    "**CI** (per cell): cluster bootstrap over people (identity / subject) of the metric averaged over the "
    "cell's runs; it reflects which people happened to be in the evaluated split, with the trained models fixed.",
    "**Difference CI and bootstrap p**: both cells scored on the same people, resampled jointly; bootstrap "
    "standard error with a t distribution on (people - 1) degrees of freedom and the G/(G-1) small-sample factor.",
    "**Across-run test**: paired t-test of the per-run differences (same seed, same fold); over k folds with the "
    "Nadeau-Bengio correction, because the folds' training sets overlap. It reflects training randomness.",
    "**p** (the column Holm adjusts): with 3 or more runs per cell, the larger of the bootstrap p and the "
    "across-run p (a difference must hold over people *and* over training runs); with fewer runs, the bootstrap p.",
    f"**Verdict**: `better` / `worse` (for {', '.join(sorted(LOWER_IS_BETTER - {'loss'}))}, lower is better) when the Holm-adjusted p < 0.05 (over all cells compared with the baseline), "
    f"else `no evidence`; for {' and '.join(f'{k} (best at {v:g})' for k, v in IDEAL.items())}, `differs`. "
    "McNemar counts, where shown, assume independent images and are descriptive; the "
    "clustered McNemar (Durkalski 2003) does not.",
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
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split:
                ids.append(row["id"])
                groups.append(row.get("group") or row["id"])  # older runs without groups: one per image
                label = [float(row[column]) for column in entry.label_columns]
                labels.append(label if len(label) > 1 else label[0])
                values = [float(row[column]) for column in columns]
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


def select_tuned(study: Study, cell: str, metric: str) -> tuple[list[Run], dict | None]:
    """With a tuning search, the cell's runs of the setting with the best mean valid metric."""
    runs = [r for r in study.runs if r.cell == cell]
    if not study.tune:
        return runs, None
    by_setting: dict[str, list[Run]] = {}
    for r in runs:
        by_setting.setdefault(json.dumps(r.tune, sort_keys=True), []).append(r)
    valid = {k: float(np.mean([_metrics_json(r)["valid"][metric] for r in rs])) for k, rs in by_setting.items()}
    best = min(valid, key=lambda k: distance_from_best(metric, valid[k]))
    return by_setting[best], {"chosen": json.loads(best), "valid_" + metric: {k: round(v, 4) for k, v in valid.items()}}


def load_cell(study: Study, cell: str, metric: str, task: str = "binary") -> CellData:
    with_reference = scored_as(task).reference  # survival: each run's training-split reference
    runs, tuned = select_tuned(study, cell, metric)
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
                    np.stack(rows), per_run, sizes, task, references, np.stack(thresholds), ", ".join(sorted(rules)))


def check_finished(study: Study) -> None:
    unfinished = [r for r in study.runs if run_status(Path(r.dir)) != "done"]
    if unfinished:
        first = Path(unfinished[0].dir)
        raise UserError(f"{len(unfinished)} of {len(study.runs)} runs of study {study.name} are not finished "
                        f"(first: {first}); run `{' '.join(study.argv) or 'covfuse sweep ...'}` again to finish them")


def study_task(study: Study) -> str:
    """The one task (binary, multiclass, regression, survival) all runs of a finished study share."""
    tasks = {run_task(Path(r.dir)) for r in study.runs}
    if len(tasks) > 1:
        raise UserError(f"study {study.name} mixes tasks ({', '.join(sorted(tasks))}); compare runs with the same head")
    return tasks.pop() if tasks else "binary"


def build_report(study: Study, *, baseline: str | None = None, metric: str | None = None, n_boot: int = 2000,
                 seed: int = 0, unit: str = "group") -> dict:
    """The report as a dict: the **contract** keys (baseline, metric, rows) plus details.

    ``metric`` defaults to the task's primary score (accuracy; balanced accuracy for multi-class; MAE
    for regression, where lower is better; C-index for survival). ``unit="image"`` resamples images
    instead of people: only for data without repeated people.
    """
    if unit not in ("group", "image"):
        raise UserError(f"unknown resampling unit {unit!r}; choose group or image")
    baseline = baseline or study.baseline
    if baseline not in study.cells:
        raise UserError(f"baseline {baseline!r} is not a cell of study {study.name}{suggest(baseline, study.cells)}; "
                        f"cells: {', '.join(study.cells)}")
    check_finished(study)
    task = study_task(study)
    metric = check_metric(metric or PRIMARY[task], task)
    cells = {name: load_cell(study, name, metric, task) for name in study.cells}
    if unit == "image":
        for c in cells.values():
            c.groups = c.ids
    base = cells[baseline]
    for c in cells.values():
        if not np.array_equal(c.ids, base.ids):
            raise UserError(f"cells {c.name} and {baseline} were evaluated on different samples; "
                            "compare cells of one study on one data folder")
    pool = len(base.ids)
    rows = []
    for name, c in cells.items():
        pooled = cluster_bootstrap(c.labels, c.probs, c.groups, metric, n_boot=n_boot, seed=seed, task=task,
                                   references=c.references, threshold=c.thresholds)
        values = list(c.per_run.values())
        row = {"setting": name, "settings": c.settings, "n_runs": len(c.runs),
               "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),  # one run: undefined
               "ci": pooled["ci"], "estimate": pooled["estimate"], "clusters": pooled["clusters"]}
        if name == baseline:
            row.update(difference=0.0, difference_ci=[0.0, 0.0], p_value=1.0, bootstrap_p=1.0, seed_test=None)
        else:
            paired = paired_cluster_bootstrap(c.labels, c.probs, base.probs, c.groups, metric, n_boot=n_boot, seed=seed,
                                              task=task, references_a=c.references, references_b=base.references,
                                              threshold=c.thresholds, threshold_b=base.thresholds)
            common = sorted(set(c.per_run) & set(base.per_run), key=lambda k: (k[0], -1 if k[1] is None else k[1]))
            diffs = [c.per_run[k] - base.per_run[k] for k in common]
            if study.kind == "cv":
                n_test = float(np.mean([c.per_run_sizes[k] for k in common]))
                across = seed_test(diffs, n_train=pool - n_test, n_test=n_test)
            else:
                across = seed_test(diffs)
            p = paired["p_value"]
            if len(diffs) >= 3 and math.isfinite(across["p_value"]):
                p = max(p, across["p_value"])
            row.update(difference=paired["difference"], difference_ci=paired["ci"], p_value=float(p),
                       bootstrap_p=paired["p_value"], seed_test=across)
            if c.probs.shape[0] == 1 and task == "binary":
                row["mcnemar_clustered"] = clustered_mcnemar(c.labels, c.probs[0], base.probs[0], c.groups,
                                                             threshold=c.thresholds[0], threshold_b=base.thresholds[0])
        if c.tuned:
            row["tuned"] = c.tuned
        if task == "binary":
            row["threshold"] = {"rule": c.threshold_rule, "values": sorted({float(t) for t in c.thresholds[:, 0]})}
        row["gaps"] = _mean_gaps(c.runs, "valid" if study.kind == "cv" else "test", SUBGROUP_STATS[task][0])
        rows.append(row)
    compared = [r for r in rows if r["setting"] != baseline]
    for r, adj in zip(compared, holm([r["p_value"] for r in compared])):
        r["p_adjusted"] = adj
        r["verdict"] = verdict(metric, r["difference"], adj)
    base_row = next(r for r in rows if r["setting"] == baseline)
    base_row.update(p_adjusted=1.0, verdict="baseline")
    also_scores(rows, cells, baseline, metric, task, n_boot=n_boot, seed=seed)
    search = read_summary(study)  # an Optuna search's tuning table
    curves = clinical_plots.study_curves({name: (c.labels, c.probs, c.thresholds) for name, c in cells.items()}, task)
    return {"study": study.name, "kind": study.kind, "baseline": baseline, "metric": metric, "task": task, "unit": unit,
            "split": "out-of-fold (valid of each fold)" if study.kind == "cv" else "test",
            "samples": pool, "clusters": int(len(np.unique(base.groups))), "seeds": study.seeds, "folds": study.folds,
            "n_boot": n_boot, "rows": rows, **({"curves": curves} if curves else {}),
            **({"search": search} if search else {})}


def also_scores(rows: list[dict], cells: dict[str, CellData], baseline: str, metric: str, task: str, *, n_boot: int,
                seed: int) -> None:
    """Each row's ``also``: the task's :data:`ALSO` scores other than the report's metric, each with a pooled CI
    and the paired difference from the baseline (CI, p, Holm over the compared cells of that score), people
    resampled as for the main metric and every score drawn from the same resamples (:func:`score_draws`).
    A survival run's IBS and td-AUC need its training-split reference: without one (CV, older runs) they are None."""
    names = [n for n in ALSO.get(task, ()) if n != metric]
    if not names:
        return
    usable = [n for n in names if task != "survival" or n == "c_index" or all(c.references is not None
                                                                                for c in cells.values())]
    draws = {cell: score_draws(c.labels, c.probs, c.groups, usable, n_boot=n_boot, seed=seed, task=task,
                               references=c.references, threshold=c.thresholds) for cell, c in cells.items()} \
        if usable else {}
    for name in names:
        entries = {}
        for cell in cells:
            if name not in usable:
                entries[cell] = {"estimate": None, "ci": [None, None], "difference": None,
                                 "difference_ci": [None, None], "p_value": None}
                continue
            entry = pooled_interval(draws[cell], name)
            if cell == baseline:
                entry.update(difference=0.0, difference_ci=[0.0, 0.0], p_value=1.0)
            else:
                paired = paired_difference(draws[cell], draws[baseline], name)
                entry.update(difference=paired["difference"], difference_ci=paired["ci"], p_value=paired["p_value"])
            entries[cell] = entry
        compared = [cell for cell in cells if cell != baseline and entries[cell]["p_value"] is not None
                    and math.isfinite(entries[cell]["p_value"])]
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


def also_markdown(report: dict) -> list[str]:
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
            if r["setting"] == base or e.get("difference") is None:
                diff, p = "–", "–"
            else:
                diff, p = f"{e['difference']:+.3f}{ci_text(e['difference_ci'], sign=True)}", p_text(e.get("p_adjusted"))
            lines.append(f"| {n} | {md_escape(r['setting'])} | {num_text(e['estimate'])}{ci_text(e['ci'])} | {diff} | {p} |")
    words = threshold_words(report)
    return lines + ["", *([md_escape(words).replace("\\`", "`"), ""] if words else [])]


def also_entry(report: dict, row: dict, name: str) -> dict:
    """Estimate, CI, difference (CI) and Holm p of ``name`` for one report row (the main metric or an ``also``)."""
    if name == report["metric"]:
        return {"estimate": row["estimate"], "ci": row["ci"], "difference": row["difference"],
                "difference_ci": row["difference_ci"], "p_adjusted": row.get("p_adjusted")}
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
def to_json(report: dict) -> str:
    return json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n"


def to_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["setting", "n_runs", "mean", "sd", "ci_lo", "ci_hi", "difference", "difference_ci_lo",
                "difference_ci_hi", "p_value", "p_adjusted", "verdict"])
    for r in report["rows"]:
        sd = r["sd"] if r["sd"] is not None and math.isfinite(r["sd"]) else None
        w.writerow([r["setting"], r["n_runs"], f"{r['mean']:.6f}", "" if sd is None else f"{sd:.6f}", *r["ci"],
                    f"{r['difference']:.6f}", *r["difference_ci"], r["p_value"], r["p_adjusted"], r["verdict"]])
    return out.getvalue()


def to_markdown(report: dict, study: Study, *, context: Sequence[str] = ()) -> str:
    metric, base = report["metric"], report["baseline"]
    suffix = report_suffix(report)
    base_args = " ".join(a if "\n" not in a else "<the study file's run settings>" for a in study.base)
    lines = [f"# Study {study.name}", "", *context, "" if context else None,
             f"{study.kind.upper() if study.kind == 'cv' else 'Sweep'}: {len(study.cells)} cells, seeds "
             f"{', '.join(map(str, study.seeds))}" + (f", {study.folds} folds" if study.folds else "")
             + f"; {metric} on the {report['split']} split: {report['samples']} samples of {report['clusters']} people. "
             f"Baseline: **{md_escape(base)}**. Base config: `{base_args.replace('`', chr(39))}`.",
             "",
             f"| setting | runs | mean ± sd | pooled {metric} [95% CI] | difference vs {md_escape(base)} [95% CI] | p | "
             "p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    lines = [x for x in lines if x is not None]
    for r in report["rows"]:
        diff = "–" if r["setting"] == base else f"{r['difference']:+.3f}{ci_text(r['difference_ci'], sign=True)}"
        lines.append(f"| {md_escape(r['setting'])} | {r['n_runs']} | {r['mean']:.3f} ± {sd_text(r['sd'])} | {num_text(r['estimate'])}"
                     f"{ci_text(r['ci'])} | {diff} | {'–' if r['setting'] == base else p_text(r['p_value'])} | "
                     f"{'–' if r['setting'] == base else p_text(r['p_adjusted'])} | {r['verdict']} |")
    lines += ["", *also_markdown(report)]
    lines += [f"![differences](figures/forest{suffix}.png)", "", f"![{metric}](figures/metric{suffix}.png)", "",
              *clinical_markdown(report),
              "## Tests behind each row", "",
              "| setting | bootstrap p | across runs (method: t, p) | clustered McNemar (a only / b only, p) |",
              "|---|---|---|---|"]
    for r in report["rows"]:
        if r["setting"] == base:
            continue
        st = r["seed_test"]
        across = "–" if not st or st["t"] is None else f"{st['method']}: t = {st['t']:.2f}, p = {p_text(st['p_value'])}"
        mc = r.get("mcnemar_clustered")
        mcn = f"{mc['a_only']} / {mc['b_only']}, p = {p_text(mc['p_value'])}" if mc else "–"
        lines.append(f"| {md_escape(r['setting'])} | {p_text(r['bootstrap_p'])} | {across} | {mcn} |")
    lines += ["", "What each number assumes:", "", *[f"- {a}" for a in ASSUMPTIONS], ""]
    tuned = [r for r in report["rows"] if r.get("tuned")]
    if tuned:
        lines += ["## Equal tuning budget", "",
                  f"Every cell got the same search over {md_escape(grid_words(study.tune))}; "
                  f"the value with the best mean valid {metric} was kept, and test was scored once.", "",
                  "| setting | chosen | valid " + metric + " per value |", "|---|---|---|"]
        for r in tuned:
            chosen = settings_text(r["tuned"]["chosen"])
            per = "; ".join(settings_text(json.loads(k)) + f": {v:.3f}" for k, v in r["tuned"][f"valid_{metric}"].items())
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
    lines += ["## Training curves", "", "![loss curves](figures/loss_curves.png)", "", "## Runs", ""]
    root = Path(study.study_dir)
    for r in report["rows"]:
        cell_runs = [run for run in study.runs if run.cell == r["setting"]]
        links = ", ".join(f"[{md_escape(Path(run.dir).relative_to(root))}]({Path(run.dir).relative_to(root)}/metrics.json)"
                          for run in cell_runs)
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
    names = clinical_figures(report)
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


def plot_forest(report: dict, out: Path) -> Path:
    """Difference from the baseline with its 95% CI, one line per cell, coloured by verdict."""
    plt = _plt()
    rows = [r for r in report["rows"] if r["setting"] != report["baseline"]]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(rows) + 1.4))
    colour = {"better": "C2", "worse": "C3", "differs": "C0", "no evidence": "C7"}
    for i, r in enumerate(rows):
        lo, hi = r["difference_ci"]
        if lo is not None:
            ax.plot([lo, hi], [i, i], color=colour[r["verdict"]], lw=2.5)
        ax.plot(r["difference"], i, "o", color=colour[r["verdict"]], ms=7)
        ax.text(1.01, i, f"{r['verdict']} (p_Holm {p_text(r['p_adjusted'])})", transform=ax.get_yaxis_transform(),
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
    """The pooled metric per cell with its 95% CI; optional reference lines (e.g. Bayes accuracies)."""
    plt = _plt()
    rows = report["rows"]
    names = [r["setting"] for r in rows]
    est = np.array([r["estimate"] for r in rows], dtype=float)
    ci = np.array([[np.nan, np.nan] if r["ci"][0] is None else r["ci"] for r in rows], dtype=float)
    err = np.nan_to_num(np.stack([est - ci[:, 0], ci[:, 1] - est]))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(rows)), 3.8))
    ax.bar(range(len(rows)), est, yerr=err, capsize=5, color=[f"C{i % 10}" for i in range(len(rows))], alpha=0.85)
    for i, v in enumerate(est):
        ax.text(i, v + err[1, i] + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
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
    """Smoothed training loss and validation loss of each cell's first run, one colour per cell."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, cell in enumerate(study.cells):
        run = next(r for r in study.runs if r.cell == cell)
        path = Path(run.dir) / "metrics.csv"
        if not path.is_file():
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
    else:  # runs without a metrics.csv (trainer.logger without csv, or copied without it)
        ax.text(0.5, 0.5, "no metrics.csv in these runs: no loss curves", ha="center", va="center",
                transform=ax.transAxes)
    fig.tight_layout()
    return save_figure(fig, out)


def report_suffix(report: dict) -> str:
    """'' for the task's default metric; ``-<metric>`` otherwise, so a report on another metric is
    written beside the default one instead of replacing it."""
    return "" if report["metric"] == PRIMARY.get(report.get("task", "binary")) else f"-{report['metric']}"


def report_files(report: dict) -> list[str]:
    """The files :func:`write_report` writes for ``report``, relative to the study folder."""
    s = report_suffix(report)
    return [f"report{s}.md", f"report{s}.json", f"report{s}.csv", f"figures/forest{s}.png", f"figures/metric{s}.png",
            "figures/loss_curves.png", *(f"figures/{name}.png" for name in clinical_figures(report))]


def write_report(study: Study, report: dict, *, context: Sequence[str] = (),
                 reference: dict[str, float] | None = None) -> Path:
    """report.md, report.json, report.csv and figures/ in the study folder (``report-<metric>.*`` for a
    metric other than the task's default); returns the markdown file."""
    root = Path(study.study_dir)
    s = report_suffix(report)
    plot_forest(report, root / "figures" / f"forest{s}.png")
    plot_metric(report, root / "figures" / f"metric{s}.png", reference)
    plot_loss_curves(study, root / "figures" / "loss_curves.png")
    clinical_plots.study_figures(report, root / "figures")
    atomic_write_text(root / f"report{s}.json", to_json(report))
    atomic_write_text(root / f"report{s}.csv", to_csv(report))
    return atomic_write_text(root / f"report{s}.md", to_markdown(report, study, context=context))
