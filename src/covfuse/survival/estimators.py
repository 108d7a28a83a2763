"""Nonparametric survival estimators: Kaplan-Meier, the censoring Kaplan-Meier, Breslow's baseline, tau and the grid.

Labels are (N, 2) ``[time, event]`` (event 1 = observed, 0 = censored); risk scores are the log
relative hazard of a Cox model (higher = earlier event). Breslow's baseline cumulative hazard
``H0(t) = sum_{event times s <= t} d_s / sum_{j: T_j >= s} exp(r_j)`` gives ``S(t | x) =
exp(-H0(t) exp(r(x)))``; ``tests/survival/test_estimators_and_scores.py`` checks it against lifelines'
``CoxPHFitter`` (whose baseline is Breslow's), the Kaplan-Meier median against lifelines', and the
censoring Kaplan-Meier, through the IPCW scores built on it, against scikit-survival's.

Written on numpy because the estimates must be weighted (a cluster bootstrap scores B resamples as
B weightings of one sample) and float64 throughout; the libraries offer neither weights per
resample nor a saved baseline to reuse. A ``weights`` argument is None (one unweighted sample),
(N,) (one weighting: the result has no resample axis) or (B, N) (one row per resample).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix

UNO_QUANTILE = 0.8
"""Uno's C is truncated at this quantile of the training split's observed times by default
(:func:`uno_tau`): beyond it few people remain under observation and the inverse censoring weights
explode."""

GRID_QUANTILES = (0.25, 0.5, 0.75)
"""The default evaluation grid: these quantiles of the training split's event times (rounded to 4
significant digits so the ``S@<t>`` column names are the exact times)."""


def split_labels(labels) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) float64 and bool vectors of (N, 2) survival labels."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return y[:, 0], y[:, 1] > 0.5


def weight_rows(n: int, weights: np.ndarray | None) -> np.ndarray:
    """Bootstrap weights as (B, N) float64 rows: None is one unweighted row of ``n`` ones. The one
    weights rule of every weighted score (survival here, the other tasks in covfuse.training.metrics)."""
    return np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))


def _weighted_counts(time: np.ndarray, event: np.ndarray, w: np.ndarray):
    """Distinct times (K,), and per weighting row (B, K) the total weight and the event weight at each."""
    values, code = np.unique(time, return_inverse=True)
    member = csr_matrix((np.ones(len(time)), (np.arange(len(time)), code.reshape(-1))), shape=(len(time), len(values)))
    total, events = np.asarray((member.T @ w.T).T), np.asarray((member.T @ (w * event).T).T)
    return values, total, events


def _shaped(rows: np.ndarray, weights) -> np.ndarray:
    """(B, K) rows as the caller's weights ask: no resample axis for None or (N,) weights."""
    return rows[0] if weights is None or np.ndim(weights) == 1 else rows


def kaplan_meier(time, event, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival: (distinct times (K,), S just after each), S (K,) or (B, K) per ``weights``."""
    time, event = np.asarray(time, dtype=np.float64).reshape(-1), np.asarray(event, dtype=bool).reshape(-1)
    values, total, deaths = _weighted_counts(time, event, weight_rows(len(time), weights))
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(at_risk > 0, deaths / np.where(at_risk > 0, at_risk, 1), 0.0)
    return values, _shaped(np.cumprod(1.0 - ratio, axis=1), weights)


def km_median(time, event) -> float | None:
    """The Kaplan-Meier median survival: the first time S(t) <= 0.5 (None when it never gets there)."""
    values, s = kaplan_meier(time, event)
    below = np.flatnonzero(s <= 0.5 + 1e-12)
    return float(values[below[0]]) if len(below) else None


def censoring_km(time, event, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring distribution G(t) = P(C > t): (distinct times (K,), G at each),
    G (K,) or (B, K) per ``weights``. As scikit-survival's ``CensoringDistributionEstimator``: at each
    distinct time the censored count is divided by those at risk minus that time's events, and a
    time is its own step (G(t_i) includes the censorings at t_i); 1 throughout without censoring."""
    time, event = np.asarray(time, dtype=np.float64).reshape(-1), np.asarray(event, dtype=bool).reshape(-1)
    values, total, events = _weighted_counts(time, event, weight_rows(len(time), weights))
    censored = total - events
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1] - events
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(censored > 0, censored / np.where(at_risk > 0, at_risk, 1), 0.0)
    return values, _shaped(np.cumprod(1.0 - ratio, axis=1), weights)


def step_at(knots: np.ndarray, values: np.ndarray, t, before: float) -> np.ndarray:
    """A right-continuous step function (``values[k]`` from ``knots[k]`` on) at times ``t``; ``before``
    left of the first knot, the last value after the last knot."""
    idx = np.searchsorted(knots, np.asarray(t, dtype=np.float64), side="right") - 1
    out = np.where(idx >= 0, values[np.clip(idx, 0, None)] if len(values) else before, before)
    return np.asarray(out, dtype=np.float64)


@dataclass
class Censoring:
    """The censoring distribution G(t) of one sample (:func:`censoring_km`), as a step function of t."""

    times: np.ndarray
    survival: np.ndarray

    @classmethod
    def fit(cls, labels) -> "Censoring":
        return cls(*censoring_km(*split_labels(labels)))

    def at(self, t) -> np.ndarray:
        """G(t), 1 before the first time."""
        return step_at(self.times, self.survival, t, 1.0)


@dataclass
class Baseline:
    """Breslow's baseline cumulative hazard H0 at the distinct event times of the training split, kept
    as log H0 too: S(t | x) = exp(-exp(log H0(t) + r(x))) stays finite for any risk score, where
    ``H0(t) * exp(r)`` would overflow (r above ~709) or multiply an underflowed H0 by an infinite exp(r)."""

    times: np.ndarray
    cumulative_hazard: np.ndarray
    log_cumulative_hazard: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.log_cumulative_hazard is None:
            with np.errstate(divide="ignore"):
                self.log_cumulative_hazard = np.log(np.asarray(self.cumulative_hazard, dtype=np.float64))

    def at(self, t) -> np.ndarray:
        return step_at(self.times, self.cumulative_hazard, t, 0.0)

    def log_at(self, t) -> np.ndarray:
        """log H0(t); -inf before the first event time."""
        return step_at(self.times, self.log_cumulative_hazard, t, -np.inf)

    def survival(self, risk, times) -> np.ndarray:
        """S(t | x) = exp(-H0(t) exp(risk)), (N, T) for risks (N,) and times (T,), computed as
        exp(-exp(log H0(t) + risk))."""
        r = np.asarray(risk, dtype=np.float64).reshape(-1, 1)
        log_h = self.log_at(np.asarray(times, dtype=np.float64).reshape(1, -1))
        with np.errstate(over="ignore", under="ignore"):
            return np.exp(-np.exp(log_h + r))


def breslow(labels, risk) -> Baseline:
    """Breslow's estimator from (N, 2) ``[time, event]`` labels and risk scores of the same samples:
    at each distinct event time s, ``d_s / sum_{T_j >= s} exp(r_j)`` (the risk set of all N samples,
    tied times all at risk). Summed in logs (log-sum-exp over each risk set, then over the event
    times), so no risk score is too large or too small: shifting every risk by c shifts log H0 by -c
    and leaves S(t | x) as it is."""
    time, event = split_labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    values, code = np.unique(time, return_inverse=True)
    code = code.reshape(-1)
    log_mass = np.full(len(values), -np.inf)
    np.logaddexp.at(log_mass, code, r)  # log sum exp(r) of the samples at each distinct time
    log_at_risk = np.logaddexp.accumulate(log_mass[::-1])[::-1]  # ... of everyone with T_j >= that time
    deaths = np.bincount(code, weights=event.astype(np.float64), minlength=len(values))
    has = deaths > 0
    log_h = np.logaddexp.accumulate(np.log(deaths[has]) - log_at_risk[has]) if has.any() else np.zeros(0)
    with np.errstate(over="ignore", under="ignore"):  # H0 itself only for show: the log is what S(t | x) uses
        return Baseline(values[has], np.exp(log_h), log_h)


def uno_tau(labels) -> float:
    """The horizon Uno's C is truncated at: :data:`UNO_QUANTILE` of the observed times (NaN without any)."""
    time, _ = split_labels(labels)
    return float(np.quantile(time, UNO_QUANTILE)) if len(time) else float("nan")


def default_grid(train_labels) -> list[float]:
    """:data:`GRID_QUANTILES` of the training event times, 4 significant digits, distinct; empty when they
    give fewer than two distinct times (events at one time, or nearly all at one: one point has no
    integral for the IBS and no curve to average; the caller says so and asks for a grid,
    :func:`covfuse.training.survival_reference.check_times`)."""
    time, event = split_labels(train_labels)
    if not event.any():
        return []
    q = np.quantile(time[event], GRID_QUANTILES)
    grid = sorted({float(f"{v:.4g}") for v in q})
    return grid if len(grid) >= 2 else []


def usable_grid(labels, grid) -> np.ndarray:
    """The grid times inside this split's follow-up, ``min(time) <= t < max(time)`` (where
    scikit-survival's Brier score and AUC are defined; beyond the last time nobody is observed)."""
    time, _ = split_labels(labels)
    g = np.asarray(sorted(grid), dtype=np.float64)
    if not len(time):
        return g[:0]
    return g[(g >= time.min()) & (g < time.max())]
