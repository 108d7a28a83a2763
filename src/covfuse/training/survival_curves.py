"""Survival probabilities of a Cox model: Breslow's baseline cumulative hazard, S(t | x), Kaplan-Meier curves.

A survival head predicts a risk score r(x) (the log relative hazard). After training, the baseline
cumulative hazard is estimated by Breslow's estimator on the *training split* (every training
sample in one risk set, not a batch): ``H0(t) = sum_{event times s <= t} d_s / sum_{j: T_j >= s}
exp(r_j)``; then ``S(t | x) = exp(-H0(t) exp(r(x)))``. The run saves it (:data:`BASELINE_FILE`) so
``covfuse predict --times`` gives anyone's S(t). ``tests/test_survival_curves.py`` checks it against
lifelines' ``CoxPHFitter`` (whose baseline is Breslow's).

Written on numpy because the evaluation grid, the baseline and the Kaplan-Meier estimates must be
weighted (a cluster bootstrap resamples subjects as weights) and float64 throughout; the libraries
offer neither weights per resample nor a saved baseline to reuse.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from covfuse.errors import UserError

BASELINE_FILE = "survival_baseline.json"
"""In the run folder: the Breslow baseline, the evaluation grid, tau and the training censoring curve."""

GRID_QUANTILES = (0.25, 0.5, 0.75)
"""The default evaluation grid: these quantiles of the training split's event times (rounded to 4
significant digits so the ``S@<t>`` column names are the exact times)."""

def _labels(labels) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return y[:, 0], y[:, 1] > 0.5


def step_at(knots: np.ndarray, values: np.ndarray, t: np.ndarray, before: float) -> np.ndarray:
    """A right-continuous step function (``values[k]`` from ``knots[k]`` on) at times ``t``; ``before``
    left of the first knot, the last value after the last knot."""
    idx = np.searchsorted(knots, np.asarray(t, dtype=np.float64), side="right") - 1
    out = np.where(idx >= 0, values[np.clip(idx, 0, None)] if len(values) else before, before)
    return np.asarray(out, dtype=np.float64)


@dataclass
class Baseline:
    """Breslow's baseline cumulative hazard H0 at the distinct event times of the training split."""

    times: np.ndarray
    cumulative_hazard: np.ndarray

    def at(self, t) -> np.ndarray:
        return step_at(self.times, self.cumulative_hazard, t, 0.0)

    def survival(self, risk, times) -> np.ndarray:
        """S(t | x) = exp(-H0(t) exp(risk)), (N, T) for risks (N,) and times (T,)."""
        r = np.asarray(risk, dtype=np.float64).reshape(-1, 1)
        return np.exp(-self.at(np.asarray(times, dtype=np.float64).reshape(1, -1)) * np.exp(r))


def breslow(labels, risk) -> Baseline:
    """Breslow's estimator from (N, 2) ``[time, event]`` labels and risk scores of the same samples:
    at each distinct event time s, ``d_s / sum_{T_j >= s} exp(r_j)`` (the risk set of all N samples,
    tied times all at risk); the max risk is factored out so exp never overflows."""
    time, event = _labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    shift = r.max() if len(r) else 0.0
    values, code = np.unique(time, return_inverse=True)
    mass = np.bincount(code.reshape(-1), weights=np.exp(r - shift), minlength=len(values))
    deaths = np.bincount(code.reshape(-1), weights=event.astype(np.float64), minlength=len(values))
    at_risk = np.cumsum(mass[::-1])[::-1]
    has = deaths > 0
    increments = deaths[has] / at_risk[has] * np.exp(-shift)
    return Baseline(values[has], np.cumsum(increments))


def kaplan_meier(time, event, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival (distinct times, S just after each), with optional weights (N,)."""
    time, event = np.asarray(time, dtype=np.float64), np.asarray(event, dtype=bool)
    w = np.ones(len(time)) if weights is None else np.asarray(weights, dtype=np.float64)
    values, code = np.unique(time, return_inverse=True)
    total = np.bincount(code.reshape(-1), weights=w, minlength=len(values))
    deaths = np.bincount(code.reshape(-1), weights=w * event, minlength=len(values))
    at_risk = np.cumsum(total[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(at_risk > 0, deaths / np.where(at_risk > 0, at_risk, 1), 0.0)
    return values, np.cumprod(1.0 - ratio)


def km_median(time, event) -> float | None:
    """The Kaplan-Meier median survival: the first time S(t) <= 0.5 (None when it never gets there)."""
    values, s = kaplan_meier(time, event)
    below = np.flatnonzero(s <= 0.5 + 1e-12)
    return float(values[below[0]]) if len(below) else None


@dataclass
class Censoring:
    """Kaplan-Meier of the censoring distribution G(t) = P(C > t) on the training split, as
    scikit-survival's ``CensoringDistributionEstimator`` (censorings at t count at t; 1 before the first time)."""

    times: np.ndarray
    survival: np.ndarray

    @classmethod
    def fit(cls, labels) -> "Censoring":
        time, event = _labels(labels)
        if event.all():
            return cls(np.unique(time), np.ones(len(np.unique(time))))
        values, code = np.unique(time, return_inverse=True)
        total = np.bincount(code.reshape(-1), minlength=len(values)).astype(np.float64)
        deaths = np.bincount(code.reshape(-1), weights=event.astype(np.float64), minlength=len(values))
        at_risk = np.cumsum(total[::-1])[::-1] - deaths
        censored = total - deaths
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(censored > 0, censored / np.where(at_risk > 0, at_risk, 1), 0.0)
        return cls(values, np.cumprod(1.0 - ratio))

    def at(self, t) -> np.ndarray:
        return step_at(self.times, self.survival, t, 1.0)


def default_grid(train_labels) -> list[float]:
    """:data:`GRID_QUANTILES` of the training event times, 4 significant digits, distinct."""
    time, event = _labels(train_labels)
    if not event.any():
        return []
    q = np.quantile(time[event], GRID_QUANTILES)
    return sorted({float(f"{v:.4g}") for v in q})


def default_tau(train_labels) -> float:
    """Uno's C horizon by default: :data:`covfuse.training.survival_metrics.UNO_QUANTILE` of the
    training split's observed times."""
    from covfuse.training.survival_metrics import uno_tau

    return uno_tau(train_labels)


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
                   float(tau) if tau is not None else default_tau(train_labels),
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
        from covfuse.io import atomic_write_text

        atomic_write_text(Path(run_dir) / BASELINE_FILE, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> "Reference":
        path = Path(run_dir) / BASELINE_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {BASELINE_FILE} (the Breslow baseline a survival run writes after "
                            f"training); run `covfuse test {run_dir}` to write it")
        return cls.from_dict(json.loads(path.read_text()))


def parse_times(text: str, option: str = "--times") -> list[float]:
    """``"1,2.5,4"`` -> [1.0, 2.5, 4.0]: positive, finite numbers (``covfuse predict --times``, and
    ``--data.eval_times`` given the same way)."""
    out = []
    for part in filter(None, (p.strip() for p in text.strip().strip("[]").split(","))):
        try:
            t = float(part)
        except ValueError:
            raise UserError(f"{option}: {part!r} is not a number; give times in the unit of the time column, "
                            f"e.g. {option} 1,2.5,4") from None
        if not np.isfinite(t) or t < 0:
            raise UserError(f"{option}: {part} must be a finite time >= 0, e.g. {option} 1,2.5,4")
        out.append(t)
    if not out:
        raise UserError(f"{option} needs at least one time, e.g. {option} 1,2.5,4")
    return sorted(set(out))


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
