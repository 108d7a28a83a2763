"""Binary-classification metrics with bootstrap 95% CIs and per-subgroup tables, from saved predictions.

Everything is computed from per-sample arrays (label, probability, covariate values) after the
run, never accumulated batch by batch: torchmetrics' group-stat metrics mis-assign groups when a
batch lacks a group id and give AUROC 0.0 for single-class groups (see ARCHITECTURE.md).

The scores are written by hand on (B, N) arrays because the bootstrap needs them for B resamples at
once: sklearn, called once per resample, is ~100x slower. ``tests/test_metrics.py`` checks every
score against sklearn on fixed predictions.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

SCORES = ("accuracy", "balanced_accuracy", "f1", "f1_macro", "auroc")
"""The scores reported for every split, each with a ``<name>_ci`` interval."""

MAX_GROUP_VALUES = 10
"""Covariates with more distinct values than this are not split into subgroups (continuous ones)."""


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def scores(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Every score for each row of ``labels``/``probs`` (shape (B, N) or (N,)); one value per row.

    Conventions follow sklearn: F1 is 0 when it is undefined (no predicted and no true positives),
    balanced accuracy averages the recalls of the classes present, AUROC (ties averaged, as the
    Mann-Whitney U) is NaN when only one class occurs.
    """
    y = np.atleast_2d(np.asarray(labels)).astype(bool)
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    pred = p >= threshold
    tp = (pred & y).sum(1).astype(np.float64)
    fp = (pred & ~y).sum(1).astype(np.float64)
    fn = (~pred & y).sum(1).astype(np.float64)
    tn = (~pred & ~y).sum(1).astype(np.float64)
    pos, neg = tp + fn, tn + fp
    tpr, tnr = _safe_div(tp, pos), _safe_div(tn, neg)
    f1_pos = np.nan_to_num(_safe_div(2 * tp, 2 * tp + fp + fn), nan=0.0)
    f1_neg = np.nan_to_num(_safe_div(2 * tn, 2 * tn + fn + fp), nan=0.0)
    with np.errstate(invalid="ignore"):
        balanced = np.nanmean(np.stack([tpr, tnr]), axis=0) if y.shape[1] else np.full(len(y), np.nan)
    ranks = rankdata(p, axis=1)  # average ranks for ties, as the Mann-Whitney U needs
    u = (ranks * y).sum(1) - pos * (pos + 1) / 2
    return {
        "accuracy": _safe_div(tp + tn, pos + neg),
        "balanced_accuracy": balanced,
        "f1": f1_pos,
        "f1_macro": (f1_pos + f1_neg) / 2,
        "auroc": _safe_div(u, pos * neg),
        "tpr": tpr,
        "fpr": _safe_div(fp, neg),
    }


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str] = SCORES,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
) -> dict[str, list[float | None]]:
    """Percentile bootstrap intervals ``{name: [lo, hi]}`` of the named scores (seeded, vectorised).

    All scores share the same resamples. Resamples where a score is undefined (e.g. AUROC of a
    one-class resample) are left out of that score's interval.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    n = len(y)
    if n == 0 or n_boot <= 0:
        return {name: [None, None] for name in names}
    rng = np.random.default_rng(seed)
    chunk = max(1, int(4_000_000 // n))  # bound memory to a few (chunk, n) arrays
    draws: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        values = scores(y[idx], p[idx], threshold)
        for name in names:
            draws[name].append(values[name])
    alpha = (1 - level) / 2
    out: dict[str, list[float | None]] = {}
    for name in names:
        values = np.concatenate(draws[name])
        values = values[np.isfinite(values)]
        out[name] = [float(v) for v in np.quantile(values, [alpha, 1 - alpha])] if len(values) else [None, None]
    return out


def _number(value: float) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    value = float(value)
    return value if math.isfinite(value) else None


def _format_value(value: float) -> str:
    return f"{float(value):g}"


def group_table(
    labels: np.ndarray,
    probs: np.ndarray,
    covariates: Mapping[str, np.ndarray],
    *,
    pairs: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-subgroup metrics for every value of every covariate, and of every pair of covariates.

    Returns ``(groups, gaps)``. ``groups`` maps ``"Male=1"`` or ``"Male=1&Young=0"`` to
    ``{count, positives, accuracy, accuracy_ci, tpr, fpr, auroc}`` (``auroc`` and ``tpr``/``fpr``
    are None where the group lacks the needed class). ``gaps`` maps ``"Male"`` or ``"Male&Young"``
    to the largest minus the smallest accuracy/TPR/FPR over that covariate's groups.
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    discrete = {
        name: np.asarray(values, dtype=np.float64)
        for name, values in covariates.items()
        if len(np.unique(values)) <= MAX_GROUP_VALUES
    }
    keys: list[tuple[str, ...]] = [(name,) for name in discrete]
    if pairs:
        keys += list(itertools.combinations(discrete, 2))
    groups: dict[str, dict] = {}
    gaps: dict[str, dict] = {}
    for key in keys:
        columns = np.stack([discrete[name] for name in key], axis=1)
        members: list[dict] = []
        for combo in np.unique(columns, axis=0):
            mask = (columns == combo).all(axis=1)
            label = "&".join(f"{name}={_format_value(v)}" for name, v in zip(key, combo))
            s = {k: float(v[0]) for k, v in scores(y[mask], p[mask], threshold).items()}
            entry = {
                "count": int(mask.sum()),
                "positives": int(y[mask].sum()),
                "accuracy": _number(s["accuracy"]),
                "accuracy_ci": bootstrap_ci(y[mask], p[mask], ["accuracy"], n_boot=n_boot, seed=seed, threshold=threshold)["accuracy"],
                "tpr": _number(s["tpr"]),
                "fpr": _number(s["fpr"]),
                "auroc": _number(s["auroc"]),  # None unless both classes occur in the group
            }
            groups[label] = entry
            members.append(entry)
        gap: dict[str, float | None] = {}
        for stat in ("accuracy", "tpr", "fpr"):
            values = [m[stat] for m in members if m[stat] is not None]
            gap[stat] = float(max(values) - min(values)) if len(values) >= 2 else None
        gaps["&".join(key)] = gap
    return groups, gaps


def split_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    covariates: Mapping[str, np.ndarray] | None = None,
    *,
    loss: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
) -> dict:
    """The metrics.json entry of one split: scores with CIs, counts, subgroup tables and gaps."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    point = {k: float(v[0]) for k, v in scores(y, p, threshold).items()}
    cis = bootstrap_ci(y, p, SCORES, n_boot=n_boot, seed=seed, threshold=threshold)
    out: dict = {"count": int(len(y)), "positive_rate": _number(y.mean()) if len(y) else None}
    if loss is not None:
        out["loss"] = _number(loss)
    for name in SCORES:
        out[name] = _number(point[name])
        out[f"{name}_ci"] = cis[name]
    out["tpr"], out["fpr"] = _number(point["tpr"]), _number(point["fpr"])
    groups, gaps = group_table(y, p, covariates or {}, n_boot=n_boot, seed=seed, threshold=threshold)
    out["groups"] = groups
    out["gaps"] = gaps
    return out


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped like sklearn's ``log_loss``)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if len(y) else float("nan")
