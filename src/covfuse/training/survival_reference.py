"""A survival head's training-split reference and what is scored and predicted from it.

After training, the best checkpoint's risks on the training split give the :class:`Reference`: the
Breslow baseline, the censoring distribution, the evaluation grid and Uno's tau (saved in the run
folder as :data:`BASELINE_FILE`). Every split's scores are computed against it
(:func:`survival_scores`, :func:`survival_details`), and ``covfuse predict --times`` reads it back
for anyone's S(t | x) (:func:`add_survival_columns`). The estimators and scores themselves are
:mod:`covfuse.survival`. No torch here, so metrics.py and the study report load it cheaply; the
head's running per-epoch scores (torchmetrics) are in :mod:`covfuse.training.module`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.errors import UserError
from covfuse.io import atomic_write_text
from covfuse.survival.estimators import (
    Baseline,
    Censoring,
    breslow,
    default_grid,
    km_median,
    split_labels,
    uno_tau,
    usable_grid,
    weight_rows,
)
from covfuse.survival.scores import brier, concordance, cumulative_dynamic_auc, integrated_brier

BASELINE_FILE = "survival_baseline.json"
"""In the run folder: the Breslow baseline, the evaluation grid, tau and the training censoring curve."""


def column_name(t: float) -> str:
    """The ``S@<t>`` column of time t (shortest text that reads back as t)."""
    return f"S@{np.format_float_positional(float(t), trim='-')}"


@dataclass
class Reference:
    """What every split's survival metrics need from the training split: the Breslow baseline, the
    censoring distribution, the evaluation grid and Uno's tau (the same for every split)."""

    baseline: Baseline
    censoring: Censoring
    grid: list[float]
    tau: float
    sources: dict = field(default_factory=dict)  # how grid and tau were chosen (given / default)

    @classmethod
    def from_training(cls, train_labels, train_risk, grid: Sequence[float] | None = None,
                      tau: float | None = None, scale_labels=None) -> "Reference":
        """The reference of a training split's labels and risks; ``grid`` and ``tau`` as given, or by
        default from ``scale_labels`` (the labels every fold of a cross-validation shares; None: the
        training split's). Grid times outside the training follow-up are left out and recorded
        (``sources["eval_times_left_out"]``); :func:`check_times` refuses a run before training where
        none would be left."""
        times = resolve_times(train_labels, grid, tau, scale_labels)
        return cls(breslow(train_labels, train_risk), Censoring.fit(train_labels), times["grid"], times["tau"],
                   times["sources"])

    def to_dict(self) -> dict:
        return {"baseline_times": self.baseline.times.tolist(),
                # H0 itself overflows for risks far below 0 (log H0 > 709): null there, the log is exact
                "baseline_cumulative_hazard": [_finite(v) for v in self.baseline.cumulative_hazard],
                "baseline_log_cumulative_hazard": self.baseline.log_cumulative_hazard.tolist(),
                "censoring_times": self.censoring.times.tolist(), "censoring_survival": self.censoring.survival.tolist(),
                "eval_times": self.grid, "tau": self.tau, "sources": self.sources,
                "estimator": "Breslow baseline cumulative hazard on the training split (full risk set)"}

    @classmethod
    def from_dict(cls, d: dict) -> "Reference":
        log_h = d.get("baseline_log_cumulative_hazard")  # absent in files written before it
        with np.errstate(over="ignore", under="ignore"):
            h = (np.asarray(d["baseline_cumulative_hazard"], dtype=np.float64) if log_h is None
                 else np.exp(np.asarray(log_h, dtype=np.float64)))
        return cls(Baseline(np.asarray(d["baseline_times"], dtype=np.float64), h,
                            None if log_h is None else np.asarray(log_h, dtype=np.float64)),
                   Censoring(np.asarray(d["censoring_times"], dtype=np.float64),
                             np.asarray(d["censoring_survival"], dtype=np.float64)),
                   [float(t) for t in d["eval_times"]], float(d["tau"]), dict(d.get("sources", {})))

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / BASELINE_FILE, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "Reference":
        path = Path(run_dir) / BASELINE_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {BASELINE_FILE} (the Breslow baseline a survival run writes after "
                            f"training); run `covfuse test {run_dir}` to write it")
        return cls.from_dict(json.loads(path.read_text()))


def follow_up(labels) -> tuple[float, float]:
    """(first, last) observed time of (N, 2) labels: grid times t with ``first <= t < last`` are inside
    the follow-up (:func:`covfuse.survival.estimators.usable_grid`)."""
    time, _ = split_labels(labels)
    return (float(time.min()), float(time.max())) if len(time) else (float("nan"), float("nan"))


def _times(values) -> str:
    return ", ".join(f"{float(v):g}" for v in values)


def resolve_times(train_labels, grid: Sequence[float] | None = None, tau: float | None = None,
                  scale_labels=None) -> dict:
    """The evaluation grid and Uno's tau a run uses, and where they came from: ``{"grid", "tau",
    "left_out", "sources"}``. A given grid keeps its times inside the training split's follow-up
    (``left_out``: the others); the default grid is :func:`covfuse.survival.estimators.default_grid`
    of ``scale_labels`` (None: the training split), the default tau :func:`uno_tau` of them."""
    scale = train_labels if scale_labels is None else scale_labels
    pooled = scale_labels is not None
    given = grid is not None and len(grid) > 0
    wanted = sorted({float(t) for t in grid}) if given else default_grid(scale)
    kept = [float(t) for t in usable_grid(train_labels, wanted)]
    left_out = [t for t in wanted if t not in kept]
    of = "the cross-validation data (train + valid of every fold)" if pooled else "the training split"
    sources = {"eval_times_from": "data.eval_times" if given else f"quantiles 0.25/0.5/0.75 of the event times of {of}",
               "tau_from": "metrics.tau" if tau is not None else f"0.8 quantile of the times of {of}"}
    if left_out:
        sources["eval_times_left_out"] = left_out
    return {"grid": kept, "tau": float(tau) if tau is not None else uno_tau(scale), "left_out": left_out,
            "sources": sources}


def check_times(train_labels, grid: Sequence[float] | None = None, tau: float | None = None,
                scale_labels=None) -> list[float]:
    """Before training: a UserError when no grid time lies inside the training split's follow-up, when the
    default grid has fewer than two times, or when ``tau`` lies outside ``(first, last]``; returns the
    given grid times left out (the caller names them)."""
    first, last = follow_up(train_labels)
    inside = f"inside the training split's follow-up ({first:g} <= t < {last:g})"
    times = resolve_times(train_labels, grid, tau, scale_labels)
    given = grid is not None and len(grid) > 0
    example = default_grid(train_labels if scale_labels is None else scale_labels) or \
        [float(f"{first + (last - first) * q:.4g}") for q in (0.25, 0.5, 0.75)]
    if given and not times["grid"]:
        raise UserError(f"data.eval_times [{_times(times['left_out'])}] lie outside the training split's follow-up "
                        f"({first:g} <= t < {last:g}), where no S(t), Brier score or AUC is defined; give times "
                        f"inside it, e.g. --data.eval_times [{','.join(f'{t:g}' for t in example)}]")
    if not given and len(times["grid"]) < 2:
        time, event = split_labels(train_labels if scale_labels is None else scale_labels)
        distinct = len(np.unique(time[event]))
        raise UserError(f"the default evaluation grid (quartiles of the training event times) needs at least two "
                        f"distinct times: the training split's {int(event.sum())} event(s) fall at {distinct} distinct "
                        f"time(s); give --data.eval_times [{','.join(f'{t:g}' for t in example)}] or other times "
                        f"{inside}")
    if tau is not None and not first < float(tau) <= last:
        raise UserError(f"metrics.tau {float(tau):g} lies outside the training split's follow-up ({first:g} < τ <= "
                        f"{last:g}): Uno's C weights the events before τ by the training censoring curve, which ends "
                        f"at {last:g}; give a τ inside it, e.g. --metrics.tau {uno_tau(train_labels):g} (the default)")
    return times["left_out"]


def survival_scores(labels: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None,
                    reference: Reference | None = None) -> dict[str, np.ndarray]:
    """One value per row of ``weights``: ``c_index`` (Harrell), ``uno_c``, ``ibs`` and ``td_auc``.

    With ``reference`` (the training split's) Uno's C is truncated at its tau with censoring weights
    from the training split, and the integrated Brier score and the mean cumulative/dynamic AUC are
    computed over its grid (the grid times inside this split's follow-up,
    :func:`covfuse.survival.usable_grid`). Without one (a split scored on its own) Uno's C uses this
    split's censoring and :func:`covfuse.survival.uno_tau`, and ``ibs``/``td_auc`` are NaN."""
    out = {"c_index": concordance(labels, risk, weights)}
    n = len(weight_rows(len(np.asarray(risk).reshape(-1)), weights))
    if reference is None:
        out["uno_c"] = concordance(labels, risk, weights, tau=uno_tau(labels), ipcw=True)
        out["ibs"] = out["td_auc"] = np.full(n, np.nan)
        return out
    time, _ = split_labels(labels)
    out["uno_c"] = concordance(labels, risk, weights, tau=reference.tau, ipcw=True,
                               censoring=reference.censoring.at(time))
    grid = usable_grid(labels, reference.grid)
    out["ibs"] = integrated_brier(labels, reference.baseline.survival(risk, grid), grid, reference.censoring, weights)
    out["td_auc"] = cumulative_dynamic_auc(labels, risk, grid, reference.censoring, weights)[1]
    return out


def missing_reason(name: str, labels: np.ndarray, reference: Reference | None = None) -> str:
    """Why :func:`survival_scores` gives no ``name`` (NaN) for these labels: the first condition that
    leaves the score undefined, in words for metrics.json's ``<name>_reason`` and the report."""
    time, event = split_labels(labels)
    if not len(time):
        return "this split has no samples"
    if not event.any():
        return "no event in this split: no pair or case to score"
    if name == "c_index":
        return "no comparable pair (no event before another sample's time)"
    if name == "uno_c":
        tau = reference.tau if reference is not None else uno_tau(labels)
        if reference is not None:
            zero = event & (time < tau) & (reference.censoring.at(time) <= 0)
            if zero.any():
                return (f"an event at {time[zero].min():g}, before τ = {tau:g}, lies where the training censoring "
                        "curve is 0: its weight 1/G² is infinite")
        return f"no comparable pair with its event before τ = {tau:g}"
    if reference is None:
        return ("needs the training split's reference (its Breslow baseline and censoring curve), which a split "
                "scored on its own has not")
    grid = usable_grid(labels, reference.grid)
    first, last = follow_up(labels)
    if name == "ibs" and len(grid) < 2:
        return (f"needs two evaluation times inside this split's follow-up ({first:g} <= t < {last:g}); "
                f"{len(grid)} of the grid [{_times(reference.grid)}] lie there")
    if not len(grid):
        return f"no evaluation time inside this split's follow-up ({first:g} <= t < {last:g}); grid [{_times(reference.grid)}]"
    if name == "td_auc":
        g = reference.censoring.at(time)
        for t in grid:
            case = (time <= t) & event
            if not case.any():
                return f"no event by t = {t:g}: the AUC there has no case"
            if (case & (g <= 0)).any():
                return (f"an event by t = {t:g} lies where the training censoring curve is 0: its weight 1/G is "
                        "infinite")
    return f"{name} is undefined on this split's predictions"


def survival_details(labels: np.ndarray, risk: np.ndarray, reference: Reference | None = None) -> dict:
    """The descriptive part of a survival split's metrics.json entry: ``events``, ``km_median_survival``
    (the Kaplan-Meier median, None when S(t) stays above 0.5), ``uno_c_tau``, and with a ``reference``
    the grid times inside this split's follow-up (``eval_times``; the others in ``eval_times_left_out``)
    with the Brier score and the cumulative/dynamic AUC at each (``brier_at``, ``td_auc_at``)."""
    time, event = split_labels(labels)
    out = {"events": int(event.sum()), "km_median_survival": km_median(time, event) if len(time) else None,
           "uno_c_tau": float(reference.tau) if reference is not None else _finite(uno_tau(labels))}
    if reference is not None:
        grid = usable_grid(labels, reference.grid)
        s = reference.baseline.survival(risk, grid)
        out["eval_times"] = [float(t) for t in grid]
        outside = [float(t) for t in reference.grid if t not in set(grid.tolist())]
        if outside:  # the grid times past this split's own follow-up: named, not scored
            out["eval_times_left_out"] = outside
        out["brier_at"] = [_finite(v) for v in brier(labels, s, grid, reference.censoring)[0]]
        out["td_auc_at"] = [_finite(v) for v in cumulative_dynamic_auc(labels, risk, grid, reference.censoring)[0][0]]
    return out


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def survival_cells(reference: Reference, risk, times: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """(``S@<t>`` header, formatted rows) of S(t | x) for risks (N,) at ``times``."""
    s = reference.baseline.survival(risk, times)
    return [column_name(t) for t in times], [[repr(float(v)) for v in row] for row in s]


def add_survival_columns(reference: Reference, header: list[str], rows: list[list[str]],
                         times: Sequence[float]) -> tuple[list[str], list[list[str]]]:
    """``covfuse predict --times``: an ``S@<t>`` column per time right after ``risk``, from each row's
    printed risk (9 significant digits: the float32 risk exactly, as in predictions.csv)."""
    at = header.index("risk") + 1
    names, cells = survival_cells(reference, [float(row[at - 1]) for row in rows], times)
    return ([*header[:at], *names, *header[at:]],
            [[*row[:at], *extra, *row[at:]] for row, extra in zip(rows, cells)])
