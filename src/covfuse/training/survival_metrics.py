"""Survival scores for many bootstrap weightings at once: Harrell's C, Uno's C, the integrated Brier score, td-AUC.

Labels are (N, 2) ``[time, event]`` (event 1 = observed, 0 = censored); outputs are risk scores,
higher = earlier event. A pair (i, j) is comparable when i had the event first: ``event_i = 1`` and
``time_j > time_i``, or ``time_j == time_i`` with j censored (lifelines' and scikit-survival's
convention); it is concordant when ``risk_i > risk_j``, and a tie in risk counts one half.

Written by hand, not taken from lifelines/scikit-survival, for the same reason as
:mod:`covfuse.training.metrics`: the bootstrap scores B resamples as B weightings of one set of
predictions, so every sum over pairs is a weighted sum, done for all B rows by one matrix product;
the libraries score one unweighted sample per call. ``tests/test_survival.py`` and
``tests/test_survival_curves.py`` check them against lifelines' ``concordance_index`` and
scikit-survival's ``concordance_index_censored``, ``concordance_index_ipcw``,
``integrated_brier_score`` and ``cumulative_dynamic_auc`` (also under bootstrap weights).
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

UNO_QUANTILE = 0.8
"""Uno's C is truncated at this quantile of the training split's observed times by default (``metrics.tau``
overrides it; a split scored without a training reference uses its own): beyond it few people remain
under observation and the inverse censoring weights explode."""

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
                tau: float | None = None, ipcw: bool = False, censoring: np.ndarray | None = None) -> np.ndarray:
    """Harrell's C (``ipcw=False``) or Uno's C (``ipcw=True``, events before ``tau`` weighted by
    1 / G(time)^2) of ``risk`` (N,), one value per row of ``weights`` (B, N) (how often each sample
    occurs in each resample; None: one unweighted row). G is ``censoring`` (N,), each sample's G(time)
    from the training split (scikit-survival's ``concordance_index_ipcw(train, test, ...)``), or, when
    None, the Kaplan-Meier of this split's censoring under each weighting. NaN where no pair is
    comparable (or, for Uno's C, where G reaches zero before an event)."""
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
        g = (censoring_survival(time, event, w) if censoring is None
             else np.broadcast_to(np.asarray(censoring, dtype=np.float64), w.shape))[:, rows]
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


def survival_scores(labels: np.ndarray, risk: np.ndarray, weights: np.ndarray | None = None,
                    reference=None) -> dict[str, np.ndarray]:
    """One value per row of ``weights``: ``c_index`` (Harrell), ``uno_c``, ``ibs`` and ``td_auc``.

    With ``reference`` (a :class:`covfuse.training.survival_curves.Reference` from the training
    split) Uno's C is truncated at its tau with censoring weights from the training split, and the
    integrated Brier score and the mean cumulative/dynamic AUC are computed over its grid (the grid
    times inside this split's follow-up, see :func:`usable_grid`). Without one (a split scored on its
    own) Uno's C uses this split's censoring and :func:`uno_tau`, and ``ibs``/``td_auc`` are NaN."""
    out = {"c_index": concordance(labels, risk, weights)}
    n = len(_weights(len(np.asarray(risk).reshape(-1)), weights))
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


def usable_grid(labels: np.ndarray, grid) -> np.ndarray:
    """The grid times inside this split's follow-up, ``min(time) <= t < max(time)`` (where
    scikit-survival's Brier score and AUC are defined; beyond the last time nobody is observed)."""
    time, _ = split_labels(labels)
    g = np.asarray(sorted(grid), dtype=np.float64)
    if not len(time):
        return g[:0]
    return g[(g >= time.min()) & (g < time.max())]


def brier(labels: np.ndarray, survival: np.ndarray, times: np.ndarray, censoring,
          weights: np.ndarray | None = None) -> np.ndarray:
    """IPCW Brier score (B, T) of predicted S(t | x) (N, T) at ``times`` (Graf et al. 1999, as
    scikit-survival's ``brier_score``): an event by t contributes S^2 / G(T_i), someone still
    event-free after t contributes (1 - S)^2 / G(t), a person censored before t nothing; G from the
    training split (``censoring``), a zero G an infinite weight's zero term, as scikit-survival."""
    time, event = split_labels(labels)
    w = _weights(len(time), weights)
    s = np.asarray(survival, dtype=np.float64).reshape(len(time), len(times))
    t = np.asarray(times, dtype=np.float64)[None, :]
    g_y, g_t = censoring.at(time), censoring.at(t[0])
    with np.errstate(divide="ignore"):
        inv_y = np.where(g_y > 0, 1.0 / np.where(g_y > 0, g_y, 1.0), 0.0)
        inv_t = np.where(g_t > 0, 1.0 / np.where(g_t > 0, g_t, 1.0), 0.0)
    case = (time[:, None] <= t) & event[:, None]
    control = time[:, None] > t
    terms = s ** 2 * case * inv_y[:, None] + (1.0 - s) ** 2 * control * inv_t[None, :]
    total = w.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, (w @ terms) / np.where(total > 0, total, 1.0), np.nan)


def integrated_brier(labels: np.ndarray, survival: np.ndarray, times: np.ndarray, censoring,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """The integrated Brier score (B,): the trapezoid integral of :func:`brier` over ``times`` divided
    by their span (scikit-survival's ``integrated_brier_score``); NaN with fewer than two times."""
    times = np.asarray(times, dtype=np.float64)
    w = _weights(len(split_labels(labels)[0]), weights)
    if len(times) < 2:
        return np.full(len(w), np.nan)
    b = brier(labels, survival, times, censoring, w)
    return np.trapezoid(b, times, axis=1) / (times[-1] - times[0])


def cumulative_dynamic_auc(labels: np.ndarray, risk: np.ndarray, times: np.ndarray, censoring,
                           weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative/dynamic AUC at each time (B, T) and their mean (B,), as scikit-survival's
    ``cumulative_dynamic_auc``: cases are events by t weighted 1 / G(T_i) (G from the training split),
    controls those still event-free after t; a tie in risk counts one half; the mean integrates the
    AUC over this split's Kaplan-Meier S(t) (``sum AUC(t_k) (S(t_k-1) - S(t_k)) / (1 - S(t_last))``)."""
    from scipy.sparse import csr_matrix

    time, event = split_labels(labels)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    w = _weights(len(time), weights)
    times = np.asarray(times, dtype=np.float64)
    if not len(times):
        return np.full((len(w), 0), np.nan), np.full(len(w), np.nan)
    g = censoring.at(time)
    with np.errstate(divide="ignore"):
        ipcw = np.where(event & (g > 0), 1.0 / np.where(g > 0, g, 1.0), 0.0)
    bad = (event & (g <= 0)).any()  # scikit-survival refuses a zero censoring survival at an event
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
    if bad:
        auc[:] = np.nan
    if len(times) == 1:
        return auc, auc[:, 0].copy()
    # this split's Kaplan-Meier S at the grid times, under each weighting
    uniq, code = np.unique(time, return_inverse=True)
    cell = csr_matrix((np.ones(len(time)), (np.arange(len(time)), code.reshape(-1))), shape=(len(time), len(uniq)))
    total, deaths = np.asarray((cell.T @ w.T).T), np.asarray((cell.T @ (w * event).T).T)
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        km = np.cumprod(1.0 - np.where(at_risk > 0, deaths / np.where(at_risk > 0, at_risk, 1.0), 0.0), axis=1)
    idx = np.searchsorted(uniq, times, side="right") - 1
    s = np.where(idx >= 0, km[:, np.clip(idx, 0, None)], 1.0)
    d = -np.diff(np.concatenate([np.ones((len(w), 1)), s], axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(1.0 - s[:, -1] > 0, (auc * d).sum(1) / np.where(1.0 - s[:, -1] > 0, 1.0 - s[:, -1], 1.0), np.nan)
    return auc, mean


def survival_details(labels: np.ndarray, risk: np.ndarray, reference=None) -> dict:
    """The descriptive part of a survival split's metrics.json entry: ``events``, ``km_median_survival``
    (the Kaplan-Meier median, None when S(t) stays above 0.5), ``uno_c_tau``, and with a ``reference``
    the grid times inside this split's follow-up (``eval_times``) with the Brier score and the
    cumulative/dynamic AUC at each (``brier_at``, ``td_auc_at``)."""
    from covfuse.training.survival_curves import km_median

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
        self.target.append(target.detach().double().reshape(-1, 2))  # times stay float64

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        risk, target = dim_zero_cat(self.risk), dim_zero_cat(self.target)
        return target.cpu().double().numpy(), risk.cpu().double().numpy()

    def compute(self) -> torch.Tensor:
        if not self.risk:
            return torch.tensor(float("nan"))
        target, risk = self._arrays()
        return torch.tensor(float(concordance(target, risk)[0]))


class RunningIBS(RunningConcordance):
    """The validation epoch's integrated Brier score (``val/ibs``, lower is better), from that epoch's
    outputs alone: the Breslow baseline, the censoring distribution and the grid (quartiles of its
    event times) are estimated on the validation samples themselves, because the training split's
    risks are not recomputed every epoch. metrics.json's ``ibs`` is the one with the training split's
    baseline and censoring."""

    higher_is_better = False

    def compute(self) -> torch.Tensor:
        if not self.risk:
            return torch.tensor(float("nan"))
        from covfuse.training.survival_curves import Reference

        target, risk = self._arrays()
        if not (target[:, 1] > 0.5).any():
            return torch.tensor(float("nan"))
        reference = Reference.from_training(target, risk)
        return torch.tensor(float(survival_scores(target, risk, reference=reference)["ibs"][0]))
