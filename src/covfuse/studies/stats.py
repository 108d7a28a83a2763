"""Statistics across runs: bootstrap CIs and paired tests between two models on the same samples.

The per-run interval (:func:`bootstrap_ci`) lives in :mod:`covfuse.training.metrics`, because a run
writes its own metrics.json and ``training`` must not import ``studies``; it is re-exported here
so that studies have one place to look. The paired tests compare two sets of predictions for the
*same* samples (aligned by id): resampling the samples jointly, or counting discordant pairs,
removes the between-sample variance that makes two independent CIs overlap.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

from covfuse.errors import UserError
from covfuse.training.metrics import SCORES, bootstrap_ci, scores

__all__ = ["bootstrap_ci", "paired_bootstrap", "mcnemar", "align"]


def align(ids_a, ids_b) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(ia, ib)`` such that ``ids_a[ia] == ids_b[ib]``; both must hold the same ids."""
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    if len(ids_a) != len(ids_b) or len(np.unique(ids_a)) != len(ids_a) or set(ids_a.tolist()) != set(ids_b.tolist()):
        raise UserError("the two prediction sets do not hold the same samples; compare runs evaluated on the same split")
    ia, ib = np.argsort(ids_a, kind="stable"), np.argsort(ids_b, kind="stable")
    return ia, ib


def paired_bootstrap(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str = "accuracy",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """Difference ``metric(a) - metric(b)`` with a percentile 95% CI and a two-sided p-value.

    Both models are scored on the same resampled samples. The p-value is twice the smaller tail
    share of resampled differences on either side of zero (the percentile-interval test), floored
    at ``1 / n_boot``.
    """
    if metric not in SCORES:
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(SCORES)}")
    y = np.asarray(labels).astype(bool)
    pa, pb = np.asarray(probs_a, dtype=np.float64), np.asarray(probs_b, dtype=np.float64)
    if not (len(y) == len(pa) == len(pb)) or len(y) == 0:
        raise UserError("paired_bootstrap needs equally long, non-empty label and probability arrays")
    observed = float(scores(y, pa, threshold)[metric][0] - scores(y, pb, threshold)[metric][0])
    rng = np.random.default_rng(seed)
    chunk = max(1, int(2_000_000 // len(y)))
    diffs = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, len(y), size=(min(chunk, n_boot - start), len(y)))
        diffs.append(scores(y[idx], pa[idx], threshold)[metric] - scores(y[idx], pb[idx], threshold)[metric])
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [0.025, 0.975])
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {
        "metric": metric,
        "difference": observed,
        "ci": [float(lo), float(hi)],
        "p_value": float(min(1.0, max(p, 1.0 / len(d)))),
        "n_boot": int(len(d)),
    }


def mcnemar(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *, threshold: float = 0.5) -> dict:
    """Exact McNemar test on the discordant pairs: ``a_only`` right only for a, ``b_only`` only for b.

    Under the null (equal accuracy) each discordant sample is equally likely to favour either
    model, so ``a_only ~ Binomial(a_only + b_only, 1/2)``; scipy's exact two-sided binomial test.
    """
    y = np.asarray(labels).astype(bool)
    right_a = (np.asarray(probs_a) >= threshold) == y
    right_b = (np.asarray(probs_b) >= threshold) == y
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    n = a_only + b_only
    p = binomtest(a_only, n, 0.5).pvalue if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p)}
