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
                      tau: float | None = None) -> "Reference":
        given_grid = grid is not None and len(grid) > 0
        g = sorted({float(t) for t in grid}) if given_grid else default_grid(train_labels)
        return cls(breslow(train_labels, train_risk), Censoring.fit(train_labels), g,
                   float(tau) if tau is not None else uno_tau(train_labels),
                   {"eval_times_from": "data.eval_times" if given_grid else "quantiles 0.25/0.5/0.75 of training event times",
                    "tau_from": "metrics.tau" if tau is not None else "0.8 quantile of training times"})

    def to_dict(self) -> dict:
        return {"baseline_times": self.baseline.times.tolist(),
                "baseline_cumulative_hazard": self.baseline.cumulative_hazard.tolist(),
                "censoring_times": self.censoring.times.tolist(), "censoring_survival": self.censoring.survival.tolist(),
                "eval_times": self.grid, "tau": self.tau, "sources": self.sources,
                "estimator": "Breslow baseline cumulative hazard on the training split (full risk set)"}

    @classmethod
    def from_dict(cls, d: dict) -> "Reference":
        return cls(Baseline(np.asarray(d["baseline_times"], dtype=np.float64),
                            np.asarray(d["baseline_cumulative_hazard"], dtype=np.float64)),
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


def survival_details(labels: np.ndarray, risk: np.ndarray, reference: Reference | None = None) -> dict:
    """The descriptive part of a survival split's metrics.json entry: ``events``, ``km_median_survival``
    (the Kaplan-Meier median, None when S(t) stays above 0.5), ``uno_c_tau``, and with a ``reference``
    the grid times inside this split's follow-up (``eval_times``) with the Brier score and the
    cumulative/dynamic AUC at each (``brier_at``, ``td_auc_at``)."""
    time, event = split_labels(labels)
    out = {"events": int(event.sum()), "km_median_survival": km_median(time, event) if len(time) else None,
           "uno_c_tau": float(reference.tau) if reference is not None else _finite(uno_tau(labels))}
    if reference is not None:
        grid = usable_grid(labels, reference.grid)
        s = reference.baseline.survival(risk, grid)
        out["eval_times"] = [float(t) for t in grid]
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
