"""Concordance of risk scores with censored times: Harrell's C and Uno's C, for many bootstrap weightings at once.

Labels are (N, 2) ``[time, event]`` (event 1 = observed, 0 = censored); outputs are risk scores,
higher = earlier event. A pair (i, j) is comparable when i had the event first: ``event_i = 1`` and
``time_j > time_i``, or ``time_j == time_i`` with j censored (lifelines' and scikit-survival's
convention); it is concordant when ``risk_i > risk_j``, and a tie in risk counts one half.

Written by hand, not taken from lifelines/scikit-survival, for the same reason as
:mod:`covfuse.training.metrics`: the bootstrap scores B resamples as B weightings of one set of
predictions, so every sum over pairs is a weighted sum, done for all B rows by one matrix product;
the libraries score one unweighted sample per call. ``tests/test_survival.py`` checks both against
lifelines' ``concordance_index`` and scikit-survival's ``concordance_index_censored`` and
``concordance_index_ipcw``.
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

UNO_QUANTILE = 0.8
"""Uno's C is truncated at this quantile of the split's observed times (its ``uno_c_tau``): beyond it
few people remain under observation and the inverse censoring weights explode."""

_CHUNK_CELLS = 2_000_000  # pairs per block of the pair matrix (16 MB of float64)


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    return np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))


def split_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) float64 and bool vectors of (N, 2) survival labels."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1, 2)
    return y[:, 0], y[:, 1] > 0.5


def uno_tau(labels: np.ndarray) -> float:
    """The horizon Uno's C is truncated at: :data:`UNO_QUANTILE` of the observed times."""
    time, _ = split_labels(labels)
    return float(np.quantile(time, UNO_QUANTILE)) if len(time) else float("nan")


def censoring_survival(time: np.ndarray, event: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Kaplan-Meier estimate of the censoring distribution G(t) = P(C > t) at every sample's own time,
    one row per weighting (B, N). As scikit-survival's ``CensoringDistributionEstimator``: at each
    distinct time the censored count is divided by those at risk minus that time's events, and a time
    is its own step (G(t_i) includes the censorings at t_i)."""
    from scipy.sparse import csr_matrix

    values, code = np.unique(time, return_inverse=True)
    code = code.reshape(-1)
    member = csr_matrix((np.ones(len(time)), (np.arange(len(time)), code)), shape=(len(time), len(values)))
    total, events = np.asarray((member.T @ w.T).T), np.asarray((member.T @ (w * event).T).T)  # (B, K)
    censored = total - events
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1] - events
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(censored > 0, censored / np.where(at_risk > 0, at_risk, 1), 0.0)
    return np.cumprod(1.0 - ratio, axis=1)[:, code]


def concordance(labels: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None, *,
                tau: float | None = None, ipcw: bool = False) -> np.ndarray:
    """Harrell's C (``ipcw=False``) or Uno's C (``ipcw=True``, events before ``tau`` weighted by
    1 / G(time)^2) of ``risk`` (N,), one value per row of ``weights`` (B, N) (how often each sample
    occurs in each resample; None: one unweighted row). NaN where no pair is comparable (or, for
    Uno's C, where G reaches zero before an event)."""
    time, event = split_labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    w = _weights(len(time), weights)
    first = event.copy()
    if tau is not None:
        first &= time < tau
    rows = np.flatnonzero(first)
    num, den = np.zeros(len(w)), np.zeros(len(w))
    bad = np.zeros(len(w), dtype=bool)
    if ipcw:
        g = censoring_survival(time, event, w)[:, rows]
        wi = w[:, rows]
        bad = ((g <= 0) & (wi > 0)).any(1)
        with np.errstate(divide="ignore"):
            a = np.where(g > 0, 1.0 / np.where(g > 0, g, 1.0) ** 2, 0.0) * wi
    else:
        a = w[:, rows]
    step = max(1, _CHUNK_CELLS // max(len(time), 1))
    for start in range(0, len(rows), step):
        part = rows[start:start + step]
        ti, ri = time[part, None], r[part, None]
        comparable = (time[None, :] > ti) | ((time[None, :] == ti) & ~event[None, :])
        score = comparable * ((ri > r[None, :]) + 0.5 * (ri == r[None, :]))
        ai = a[:, start:start + step]
        num += (ai * (w @ score.T)).sum(1)
        den += (ai * (w @ comparable.T.astype(np.float64))).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    out[bad] = np.nan
    return out


def survival_scores(labels: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``c_index`` (Harrell) and ``uno_c`` (Uno, truncated at :func:`uno_tau` of these labels), one value
    per row of ``weights``."""
    return {"c_index": concordance(labels, risk, weights),
            "uno_c": concordance(labels, risk, weights, tau=uno_tau(labels), ipcw=True)}


class RunningConcordance(Metric):
    """Harrell's C over an epoch (``update(risk, target)`` with (N, 2) targets): the per-epoch
    ``train/c_index`` and ``val/c_index``, computed once from every sample the epoch saw."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("risk", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, risk: torch.Tensor, target: torch.Tensor) -> None:
        self.risk.append(risk.detach().float().reshape(-1))
        self.target.append(target.detach().float().reshape(-1, 2))

    def compute(self) -> torch.Tensor:
        if not self.risk:
            return torch.tensor(float("nan"))
        risk, target = dim_zero_cat(self.risk), dim_zero_cat(self.target)
        return torch.tensor(float(concordance(target.cpu().double().numpy(), risk.cpu().double().numpy())[0]))
