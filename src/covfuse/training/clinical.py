"""The scores and curves clinical journals ask for (TRIPOD+AI): calibration, precision-recall, net benefit,
and the decision threshold chosen on the validation split.

Like :mod:`covfuse.training.metrics`, each score is computed for B weightings of one prediction set at
once (``w`` (B, N): how often each sample occurs in each bootstrap resample), so a cluster bootstrap
scores all its resamples in a few array operations; a weighting of ones is the plain score.
``tests/training/test_clinical.py`` checks each against scikit-learn and statsmodels.

- **Brier score**: the mean squared difference between the predicted probability and the outcome
  (0/1); for a multi-class head summed over the classes (Brier's original definition, 0..2), as
  ``sklearn.metrics.brier_score_loss`` computes both.
- **Calibration intercept** (calibration-in-the-large): ``a`` in ``logit P(y=1) = a + logit(p)``, a
  logistic fit with the model's logit as an offset; 0 when the mean prediction matches the outcome rate.
  **Calibration slope**: ``b`` in ``logit P(y=1) = a + b logit(p)`` (logistic recalibration); 1 when
  the predictions are neither too extreme (< 1) nor too timid (> 1). Probabilities are clipped to
  [1e-7, 1 - 1e-7] before the logit (:data:`CLIP`, as ``log_loss`` clips them).
- **ECE** (expected calibration error): the outcome rate minus the mean prediction in each of
  :data:`ECE_BINS` equal-width bins of the prediction over [0, 1], absolute, weighted by the bin's share
  of the samples (the bins of ``sklearn.calibration.calibration_curve(strategy="uniform")``); a
  multi-class head's on the top class: its probability against whether it was the true class.
- **AUPRC**: average precision, ``sum_k (R_k - R_k-1) P_k`` over the distinct predicted probabilities
  (``sklearn.metrics.average_precision_score``; no interpolation); multi-class: the mean over the
  classes that occur of each class against the rest (macro one-vs-rest).
- **Net benefit** at a threshold probability ``t`` (Vickers & Elkin 2006): ``TP/n - FP/n * t / (1 - t)``,
  treating everyone with a predicted probability ``>= t``; treating all gives
  ``prevalence - (1 - prevalence) * t / (1 - t)``, treating none 0.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.sparse import csr_matrix
from scipy.special import expit

from covfuse.errors import UserError

CLIP = 1e-7
"""Probabilities are clipped to [CLIP, 1 - CLIP] before a logit."""

ECE_BINS = 10
"""Equal-width bins of the predicted probability over [0, 1] for the ECE and the reliability diagrams."""

DECISION_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)
"""The threshold probabilities of a decision curve: 0.01 to 0.99 in steps of 0.01."""

MAX_ITER = 100
"""Newton iterations of the calibration fits; a resample that has not converged by then (its classes
separated perfectly, so the fit runs off to infinity) gets no value."""


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [CLIP, 1 - CLIP]."""
    p = np.clip(np.asarray(p, dtype=np.float64), CLIP, 1 - CLIP)
    return np.log(p) - np.log1p(-p)


def bin_index(p: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Each probability's bin among ``bins`` equal-width bins over [0, 1], as
    ``sklearn.calibration.calibration_curve(strategy="uniform")`` bins them (a value on an edge goes to
    the lower bin)."""
    return np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], np.asarray(p, dtype=np.float64))


def _per_bin(codes: np.ndarray, k: int, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (B, N) over the samples of each of ``k`` groups: (B, k)."""
    member = csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), k))
    return np.asarray((member.T @ np.atleast_2d(values).T).T)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def mean_loss(per_sample: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted mean of a per-sample quantity (N,) under each weighting (B, N)."""
    return _ratio(w @ np.asarray(per_sample, dtype=np.float64), w.sum(1))


def brier(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Brier score per weighting: binary ``y`` (N,) 0/1 against P(positive) (N,), or class indices (N,)
    against class probabilities (N, C) (summed over the classes)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 2:
        truth = np.eye(p.shape[1])[np.asarray(y, dtype=np.int64)]
        return mean_loss(((p - truth) ** 2).sum(1), w)
    return mean_loss((p - np.asarray(y, dtype=np.float64)) ** 2, w)


def ece(outcome: np.ndarray, confidence: np.ndarray, w: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error per weighting: ``sum_b |sum_{i in b} w_i (outcome_i - confidence_i)| / sum w``
    (the bins' |observed rate - mean prediction| weighted by their share), bins of :func:`bin_index`."""
    d = np.asarray(outcome, dtype=np.float64) - np.asarray(confidence, dtype=np.float64)
    gaps = _per_bin(bin_index(confidence, bins), bins, w * d)
    return _ratio(np.abs(gaps).sum(1), w.sum(1))


def average_precision(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average precision per weighting (sklearn's, ties of the score taken together); NaN without positives."""
    y = np.asarray(y).astype(bool)
    values, block = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True)
    k = len(values)
    pos = _per_bin(block.reshape(-1), k, w * y)[:, ::-1]  # (B, distinct scores), highest score first
    neg = _per_bin(block.reshape(-1), k, w * ~y)[:, ::-1]
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    precision = np.nan_to_num(_ratio(tp, tp + fp))
    return _ratio((precision * pos).sum(1), tp[:, -1] if k else np.zeros(len(w)))


def _both_classes(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return ((w * y).sum(1) > 0) & ((w * (1 - y)).sum(1) > 0)


def _log_likelihood(y: np.ndarray, z: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eta = a[:, None] + b[:, None] * z
    return (w * (y * eta - np.logaddexp(0.0, eta))).sum(1)


def _newton_sums(w: np.ndarray, y: np.ndarray, z: np.ndarray, mu: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per weighting, the gradient (ga, gb) and information (haa, hab, hbb) of the logistic log-likelihood at
    probabilities ``mu``: (N,) shared by every weighting (one product of ``w`` with five columns) or (B, N)
    (two products)."""
    if mu.ndim == 1:
        h = mu * (1 - mu)
        ga, gb, haa, hab, hbb = (w @ np.column_stack([y - mu, (y - mu) * z, h, h * z, h * z * z])).T
        return ga, gb, haa, hab, hbb
    ga, gb = ((w * (y - mu)) @ np.column_stack([np.ones_like(z), z])).T
    haa, hab, hbb = ((w * (mu * (1 - mu))) @ np.column_stack([np.ones_like(z), z, z * z])).T
    return ga, gb, haa, hab, hbb


SAFE_STEP = math.log(2)
"""A Newton step that moves no sample's linear predictor by more than this raises the logistic likelihood:
each sample's curvature mu (1 - mu) changes along the step by at most a factor exp(change), so the likelihood
gains at least (1 - exp(change) / 2) d'Hd > 0. Only longer steps need their likelihood checked."""


def logistic_recalibration(y: np.ndarray, p: np.ndarray, w: np.ndarray, slope: bool) -> tuple[np.ndarray, np.ndarray]:
    """The weighted maximum-likelihood ``(a, b)`` of ``logit P(y=1) = a + b logit(p)`` per weighting (``slope``
    False: ``b`` fixed at 1, ``logit(p)`` an offset). Newton's method; a step longer than :data:`SAFE_STEP` is
    halved until the likelihood does not fall (so it cannot overshoot); it stops when a full step is below 1e-8
    (Newton converges quadratically there: the error left is of the order of its square). NaN where one class
    is missing or the fit does not converge in :data:`MAX_ITER` steps (the classes separated: the maximum lies
    at infinity).

    Several weightings (bootstrap resamples) start from the fit of the data itself, where their fits lie, and
    their first step is one product of the weights with five columns (the fitted probabilities are the same for
    every weighting there), so a resample usually needs two passes over its samples."""
    y = np.asarray(y, dtype=np.float64)
    z = logit(p)
    reach = float(np.abs(z).max(initial=0.0))
    start = (0.0, 1.0)
    if len(w) > 1:
        pooled = logistic_recalibration(y, p, np.ones((1, len(y))), slope)
        if np.isfinite(pooled[0][0]) and np.isfinite(pooled[1][0]):
            start = (float(pooled[0][0]), float(pooled[1][0]))
    a, b = np.full(len(w), start[0]), np.full(len(w), start[1])
    out_a, out_b = np.full(len(w), np.nan), np.full(len(w), np.nan)
    active = np.flatnonzero(_both_classes(y, w))
    shared = True  # every active weighting at the common start
    for _ in range(MAX_ITER):
        if not len(active):
            break
        ww = w[active]
        mu = expit(start[0] + start[1] * z) if shared else expit(a[active, None] + b[active, None] * z)
        ga, gb, haa, hab, hbb = _newton_sums(ww, y, z, mu)
        shared = False
        with np.errstate(divide="ignore", invalid="ignore"):
            if slope:
                det = haa * hbb - hab * hab
                da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
            else:
                da, db = ga / haa, np.zeros(len(active))
        ok = np.isfinite(da) & np.isfinite(db)
        da, db = np.where(ok, da, 0.0), np.where(ok, db, 0.0)
        step = np.ones(len(active))
        check = np.flatnonzero(np.abs(da) + reach * np.abs(db) >= SAFE_STEP)
        if len(check):  # long steps: halve those that lowered the likelihood
            a0, b0, wc = a[active[check]], b[active[check]], ww[check]
            before = _log_likelihood(y, z, wc, a0, b0)
            new = _log_likelihood(y, z, wc, a0 + da[check], b0 + db[check])
            for _ in range(40):
                worse = ~(new >= before - 1e-12 * (1 + np.abs(before)))
                if not worse.any():
                    break
                step[check[worse]] /= 2
                t = step[check[worse]]
                new[worse] = _log_likelihood(y, z, wc[worse], a0[worse] + t * da[check[worse]],
                                             b0[worse] + t * db[check[worse]])
        a[active] += step * da
        b[active] += step * db
        done = ok & (step == 1) & (np.abs(da) < 1e-8) & (np.abs(db) < 1e-8)
        out_a[active[done]], out_b[active[done]] = a[active[done]], b[active[done]]
        keep = ~done & ok & (np.abs(a[active]) < 1e4) & (np.abs(b[active]) < 1e4)
        active = active[keep]
    return out_a, out_b


def calibration_intercept(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Calibration-in-the-large per weighting: ``a`` of ``logit P(y=1) = a + logit(p)``
    (:func:`logistic_recalibration` with the model's logit as an offset)."""
    return logistic_recalibration(y, p, w, slope=False)[0]


def calibration_slope(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The calibration slope per weighting: ``b`` of ``logit P(y=1) = a + b logit(p)`` (:func:`logistic_recalibration`)."""
    return logistic_recalibration(y, p, w, slope=True)[1]


def reliability(outcome: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The reliability diagram's points: per non-empty bin of :func:`bin_index`, its ``count``, the mean
    prediction ``predicted`` and the outcome rate ``observed`` (``sklearn.calibration.calibration_curve``'s
    ``prob_pred`` and ``prob_true``, with the counts)."""
    conf = np.asarray(confidence, dtype=np.float64)
    code = bin_index(conf, bins)
    count = np.bincount(code, minlength=bins)
    total_p = np.bincount(code, weights=conf, minlength=bins)
    total_y = np.bincount(code, weights=np.asarray(outcome, dtype=np.float64), minlength=bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return [{"bin": [float(edges[k]), float(edges[k + 1])], "count": int(count[k]),
             "predicted": float(total_p[k] / count[k]), "observed": float(total_y[k] / count[k])}
            for k in range(bins) if count[k]]


def top_class(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A multi-class head's (outcome, confidence) for its calibration: whether the most probable class was
    the true one (0/1), and that class's probability."""
    probs = np.asarray(probs, dtype=np.float64)
    return (probs.argmax(1) == np.asarray(labels, dtype=np.int64)).astype(np.float64), probs.max(1)


def net_benefit(y: np.ndarray, p: np.ndarray, thresholds=DECISION_THRESHOLDS) -> np.ndarray:
    """Net benefit of treating those with ``p >= t``, at each threshold probability ``t`` (Vickers & Elkin 2006)."""
    y = np.asarray(y).astype(bool)
    t = np.asarray(thresholds, dtype=np.float64)
    order = np.sort(np.asarray(p, dtype=np.float64))
    below = np.searchsorted(order, t, side="left")  # samples with p < t are not treated
    positives_below = np.r_[0, np.cumsum(y[np.argsort(p, kind="stable")])][below]
    tp = y.sum() - positives_below
    fp = (len(y) - below) - tp
    return tp / len(y) - fp / len(y) * t / (1 - t)


def treat_all(prevalence: float, thresholds=DECISION_THRESHOLDS) -> np.ndarray:
    """Net benefit of treating everyone: ``prevalence - (1 - prevalence) * t / (1 - t)``."""
    t = np.asarray(thresholds, dtype=np.float64)
    return prevalence - (1 - prevalence) * t / (1 - t)


# -- the decision threshold -------------------------------------------------------------------------
RULES = ("youden", "sensitivity", "specificity")
"""The thresholds chosen on the validation split (besides a fixed probability)."""

_RULE_HELP = ("metrics.threshold must be a probability in (0, 1) (e.g. 0.5), youden, sensitivity=S or specificity=S "
              "with S in (0, 1] (e.g. --metrics.threshold sensitivity=0.9)")


def parse_threshold(value) -> tuple[str, float | None]:
    """``metrics.threshold`` as ``(rule, value)``: ``("fixed", 0.3)``, ``("youden", None)``,
    ``("sensitivity", 0.9)`` or ``("specificity", 0.9)``; anything else is a one-line UserError."""
    if isinstance(value, bool):
        raise UserError(f"{_RULE_HELP}; got {value!r}")
    text = str(value).strip().lower().replace(" ", "")
    name, sep, number = text.partition("=")
    if not sep and name == "youden":
        return "youden", None
    try:
        x = float(number if sep else name)
    except ValueError:
        raise UserError(f"{_RULE_HELP}; got {value!r}") from None
    if sep and name in ("sensitivity", "specificity") and 0 < x <= 1:
        return name, x
    if not sep and math.isfinite(x) and 0 < x < 1:
        return "fixed", x
    raise UserError(f"{_RULE_HELP}; got {value!r}")


def threshold_text(rule: tuple[str, float | None]) -> str:
    """The rule as ``metrics.threshold`` spells it: ``0.5``, ``youden``, ``sensitivity=0.9``."""
    kind, x = rule
    return f"{x:g}" if kind == "fixed" else kind if x is None else f"{kind}={x:g}"


def between_csv_values(t: float) -> float:
    """``t`` moved down to the nearest point halfway between two values of predictions.csv's six decimals:
    a probability read back from the file is then on the same side of the threshold as the one in memory."""
    return (math.floor(t * 1e6 + 0.5) - 0.5) / 1e6


def choose_threshold(rule: tuple[str, float | None], labels: np.ndarray, probs: np.ndarray) -> dict:
    """The threshold of ``rule`` on one split's labels and P(positive) (the validation split): a fixed value as
    given; ``youden`` the one maximising sensitivity + specificity - 1 (the highest of ties); ``sensitivity=S``
    the highest whose sensitivity is at least S; ``specificity=S`` the lowest whose specificity is at least S.
    A chosen threshold is one of the split's probabilities (a sample is positive at ``p >= threshold``), moved
    down by less than 1e-6 to lie between two values of predictions.csv (:func:`between_csv_values`).

    Returns ``{"rule", "value"}`` plus ``"note"`` where the rule is undefined on the split (one class
    only): 0.5 is used then."""
    from sklearn.metrics import roc_curve

    kind, x = rule
    out = {"rule": threshold_text(rule)}
    if kind == "fixed":
        return {**out, "value": float(x)}
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return {**out, "value": 0.5, "note": f"the split holds one class only: {out['rule']} is undefined, 0.5 used"}
    fpr, tpr, thresholds = roc_curve(y, np.asarray(probs, dtype=np.float64), drop_intermediate=False)
    if kind == "youden":
        i = int(np.argmax(tpr - fpr))
    elif kind == "sensitivity":
        i = int(np.flatnonzero(tpr >= x - 1e-12)[0])
    else:
        i = int(np.flatnonzero(1 - fpr >= x - 1e-12)[-1])
    t = float(thresholds[i])
    if not math.isfinite(t):  # sklearn's first point (nobody positive): just above the highest probability
        t = float(np.max(probs)) + 1e-6
    return {**out, "value": between_csv_values(t)}
