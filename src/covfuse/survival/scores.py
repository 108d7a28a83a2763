"""Survival scores for many bootstrap weightings at once: Harrell's C, Uno's C, the Brier score and its integral, td-AUC.

Labels are (N, 2) ``[time, event]`` (event 1 = observed, 0 = censored); outputs are risk scores,
higher = earlier event. A pair (i, j) is comparable when i had the event first: ``event_i = 1`` and
``time_j > time_i``, or ``time_j == time_i`` with j censored (lifelines' and scikit-survival's
convention); it is concordant when ``risk_i > risk_j``, and a tie in risk counts one half.

Written by hand, not taken from lifelines/scikit-survival, for the same reason as
:mod:`covfuse.training.metrics`: the bootstrap scores B resamples as B weightings of one set of
predictions, so every sum over pairs is a weighted sum, done for all B rows by one matrix product;
the libraries score one unweighted sample per call. ``tests/training/test_survival_head.py`` and
``tests/survival/test_estimators_and_scores.py`` check them against lifelines' ``concordance_index`` and
scikit-survival's ``concordance_index_censored``, ``concordance_index_ipcw``,
``integrated_brier_score`` and ``cumulative_dynamic_auc`` (also under bootstrap weights).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix

from covfuse.survival.estimators import Censoring, censoring_km, kaplan_meier, split_labels, weight_rows

_CHUNK_CELLS = 2_000_000  # pairs per block of the pair matrix (16 MB of float64)


def concordance(labels: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None, *,
                tau: float | None = None, ipcw: bool = False, censoring: np.ndarray | None = None) -> np.ndarray:
    """Harrell's C (``ipcw=False``) or Uno's C (``ipcw=True``, events before ``tau`` weighted by
    1 / G(time)^2) of ``risk`` (N,), one value per row of ``weights`` (B, N) (how often each sample
    occurs in each resample; None: one unweighted row). G is ``censoring`` (N,), each sample's G(time)
    from the training split (scikit-survival's ``concordance_index_ipcw(train, test, ...)``), or, when
    None, the Kaplan-Meier of this split's censoring under each weighting. NaN where no pair is
    comparable (or, for Uno's C, where G reaches zero before an event)."""
    time, event = split_labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    w = weight_rows(len(time), weights)
    first = event.copy()
    if tau is not None:
        first &= time < tau
    rows = np.flatnonzero(first)
    num, den = np.zeros(len(w)), np.zeros(len(w))
    bad = np.zeros(len(w), dtype=bool)
    if ipcw:
        if censoring is None:
            values, g_rows = censoring_km(time, event, w)
            g = g_rows[:, np.searchsorted(values, time)]  # each sample's G at its own time
        else:
            g = np.broadcast_to(np.asarray(censoring, dtype=np.float64), w.shape)
        g = g[:, rows]
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


def brier(labels: np.ndarray, survival: np.ndarray, times: np.ndarray, censoring: Censoring,
          weights: np.ndarray | None = None) -> np.ndarray:
    """IPCW Brier score (B, T) of predicted S(t | x) (N, T) at ``times`` (Graf et al. 1999, as
    scikit-survival's ``brier_score``): an event by t contributes S^2 / G(T_i), someone still
    event-free after t contributes (1 - S)^2 / G(t), a person censored before t nothing; G from the
    training split (``censoring``). A weight enters only where it is used: NaN at a time where a
    sample in the score needs 1 / G with G = 0 (an event at or after the training split's last time
    by t, or t itself there); scikit-survival drops such a sample's term instead."""
    time, event = split_labels(labels)
    w = weight_rows(len(time), weights)
    s = np.asarray(survival, dtype=np.float64).reshape(len(time), len(times))
    t = np.asarray(times, dtype=np.float64)[None, :]
    g_y, g_t = censoring.at(time), censoring.at(t[0])
    with np.errstate(divide="ignore"):
        inv_y = np.where(g_y > 0, 1.0 / np.where(g_y > 0, g_y, 1.0), 0.0)
        inv_t = np.where(g_t > 0, 1.0 / np.where(g_t > 0, g_t, 1.0), 0.0)
    case = (time[:, None] <= t) & event[:, None]
    control = time[:, None] > t
    infinite = (case & (g_y[:, None] <= 0)) | (control & (g_t[None, :] <= 0))  # (N, T): a weight 1/0 used
    terms = s ** 2 * case * inv_y[:, None] + (1.0 - s) ** 2 * control * inv_t[None, :]
    total = w.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(total > 0, (w @ terms) / np.where(total > 0, total, 1.0), np.nan)
    out[(w @ infinite) > 0] = np.nan
    return out


def integrated_brier(labels: np.ndarray, survival: np.ndarray, times: np.ndarray, censoring: Censoring,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """The integrated Brier score (B,): the trapezoid integral of :func:`brier` over ``times`` divided
    by their span (scikit-survival's ``integrated_brier_score``); NaN with fewer than two times."""
    times = np.asarray(times, dtype=np.float64)
    w = weight_rows(len(split_labels(labels)[0]), weights)
    if len(times) < 2:
        return np.full(len(w), np.nan)
    b = brier(labels, survival, times, censoring, w)
    return np.trapezoid(b, times, axis=1) / (times[-1] - times[0])


def cumulative_dynamic_auc(labels: np.ndarray, risk: np.ndarray, times: np.ndarray, censoring: Censoring,
                           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative/dynamic AUC at each time (B, T) and their mean (B,), as scikit-survival's
    ``cumulative_dynamic_auc``: cases are events by t weighted 1 / G(T_i) (G from the training split),
    controls those still event-free after t; a tie in risk counts one half; the mean integrates the
    AUC over this split's Kaplan-Meier S(t) (``sum AUC(t_k) (S(t_k-1) - S(t_k)) / (1 - S(t_last))``).

    A sample's weight enters only where it is used: an event where the training censoring curve is 0
    (at or after the training split's last time) makes the AUC undefined (NaN) at the times where it
    is a case, and nowhere else; at earlier times it is a control and its weight is never read.
    scikit-survival refuses the whole call instead; with that event recoded as censored it gives
    these values (tests/survival/test_estimators_and_scores.py, the Rossi case). NaN at a time
    without a case or a control, and a NaN at any time makes the mean NaN."""
    time, event = split_labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    w = weight_rows(len(time), weights)
    times = np.asarray(times, dtype=np.float64)
    if not len(times):
        return np.full((len(w), 0), np.nan), np.full(len(w), np.nan)
    g = censoring.at(time)
    with np.errstate(divide="ignore"):
        ipcw = np.where(event & (g > 0), 1.0 / np.where(g > 0, g, 1.0), 0.0)
    infinite = event & (g <= 0)  # a case weight 1/0, wherever it is a case
    values, block = np.unique(r, return_inverse=True)
    member = csr_matrix((np.ones(len(r)), (np.arange(len(r)), block.reshape(-1))), shape=(len(r), len(values)))
    auc = np.empty((len(w), len(times)))
    for k, t in enumerate(times):
        case = (time <= t) & event
        control = time > t
        case_w = np.asarray((member.T @ (w * (case * ipcw)).T).T)  # (B, distinct risks)
        ctrl_w = np.asarray((member.T @ (w * control).T).T)
        below = np.cumsum(ctrl_w, axis=1) - ctrl_w
        num = (case_w * (below + 0.5 * ctrl_w)).sum(1)
        den = case_w.sum(1) * ctrl_w.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc[:, k] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        auc[(w[:, case & infinite] > 0).any(1), k] = np.nan
    if len(times) == 1:
        return auc, auc[:, 0].copy()
    uniq, km = kaplan_meier(time, event, w)  # this split's S(t) under each weighting
    idx = np.searchsorted(uniq, times, side="right") - 1
    s = np.where(idx >= 0, km[:, np.clip(idx, 0, None)], 1.0)
    d = -np.diff(np.concatenate([np.ones((len(w), 1)), s], axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(1.0 - s[:, -1] > 0, (auc * d).sum(1) / np.where(1.0 - s[:, -1] > 0, 1.0 - s[:, -1], 1.0), np.nan)
    return auc, mean
