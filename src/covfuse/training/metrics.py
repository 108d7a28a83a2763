"""Metrics of binary, multi-class, regression and survival runs with (cluster) bootstrap 95% CIs and per-subgroup
tables, from saved predictions.

Everything is computed from per-sample arrays (label, probability, covariate values) after the
run, never accumulated batch by batch: torchmetrics' group-stat metrics mis-assign groups when a
batch lacks a group id and give AUROC 0.0 for single-class groups (docs/architecture.md).

The scores are written by hand on (B, N) arrays because the bootstrap needs them for B resamples at
once: sklearn, called once per resample, is ~100x slower. ``tests/training/test_metrics.py`` checks every
score against sklearn on fixed predictions; the calibration, precision-recall and net-benefit scores
live in :mod:`covfuse.training.clinical` (checked against sklearn and statsmodels).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Collection, Mapping, Sequence

import numpy as np
from scipy.sparse import csr_matrix
from scipy.stats import rankdata
from scipy.stats import t as t_dist

from covfuse.data.groups import Grouping, as_groupings
from covfuse.errors import UserError, suggest
from covfuse.survival.estimators import weight_rows
from covfuse.training import clinical
from covfuse.training.survival_reference import missing_reason as survival_missing_reason
from covfuse.training.survival_reference import survival_details, survival_scores

THRESHOLD_SCORES = ("accuracy", "balanced_accuracy", "f1", "f1_macro", "sensitivity", "specificity", "ppv", "npv")
"""The binary scores that depend on the decision threshold (``metrics.threshold``; metrics.json's ``threshold``)."""

CLINICAL_SCORES = ("auprc", "brier", "calibration_intercept", "calibration_slope", "ece", "sensitivity",
                   "specificity", "ppv", "npv")
"""Calibration, precision-recall and the threshold's sensitivity, specificity, PPV and NPV (:mod:`covfuse.training.clinical`)."""

SCORES = ("accuracy", "balanced_accuracy", "f1", "f1_macro", "auroc", *CLINICAL_SCORES)
"""The scores reported for every split of a binary run, each with a ``<name>_ci`` interval."""

MULTICLASS_PROBABILITY_SCORES = ("auprc", "brier", "ece")
"""The multi-class scores read from the class probabilities (one-vs-rest AUPRC, multi-class Brier, top-class ECE)."""

TASK_SCORES: dict[str, tuple[str, ...]] = {
    "binary": SCORES,
    "multiclass": ("accuracy", "balanced_accuracy", "f1_macro", *MULTICLASS_PROBABILITY_SCORES),
    "regression": ("mae", "rmse", "r2"),
    "survival": ("c_index", "uno_c", "ibs", "td_auc"),
}
"""The scores of each task. Binary scores read P(positive); multi-class scores the predicted class
(argmax); regression scores the predicted value; survival scores the risk against (time, event)
labels (:mod:`covfuse.survival.scores`)."""

PRIMARY = {"binary": "accuracy", "multiclass": "balanced_accuracy", "regression": "mae", "survival": "c_index"}
"""The score a task's summaries and reports use unless told otherwise."""

_BOUNDS = {"mae": (0.0, math.inf), "rmse": (0.0, math.inf), "r2": (-math.inf, 1.0), "brier": (0.0, 2.0),
           "calibration_intercept": (-math.inf, math.inf), "calibration_slope": (-math.inf, math.inf)}


def score_bounds(name: str) -> tuple[float, float]:
    """The range a score can take (intervals are clipped to it)."""
    return _BOUNDS.get(name, (0.0, 1.0))


def check_metric(metric: str, task: str = "binary") -> str:
    """``metric`` if the task has it, else a UserError naming the task's scores."""
    if task not in TASK_SCORES:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASK_SCORES)}")
    names = TASK_SCORES[task]
    if metric not in names:
        raise UserError(f"unknown metric {metric!r} for a {task} run{suggest(metric, names)}; choose one of {', '.join(names)}")
    return metric


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def scores(labels: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray = 0.5,
           weights: np.ndarray | None = None, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Every score for each row of ``labels``/``probs`` (shape (B, N) or (N,)); one value per row.

    With ``weights`` (B, N) (how often each sample occurs in each of B resamples), ``labels`` and
    ``probs`` are one (N,) set of predictions and row b is scored as if sample i occurred
    ``weights[b, i]`` times: the bootstrap scores every resample without copying the samples.
    A sample is positive at ``probs >= threshold`` (one threshold, or one per sample (N,)).
    Conventions follow sklearn: F1 is 0 when it is undefined (no predicted and no true positives),
    balanced accuracy averages the recalls of the classes present, AUROC (ties averaged, as the
    Mann-Whitney U) is NaN when only one class occurs, as are PPV / NPV without predicted positives /
    negatives. ``names``: the scores wanted (default: all); the costly ones not named (AUROC, AUPRC,
    ECE, the calibration fits) are skipped and NaN, as when a bootstrap needs only the others.
    """
    if weights is not None:
        y = np.asarray(labels).astype(bool).reshape(1, -1)
        p = np.asarray(probs, dtype=np.float64).reshape(1, -1)
        w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    else:
        y = np.atleast_2d(np.asarray(labels)).astype(bool)
        p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        w = np.ones(y.shape)
    want = set(SCORES if names is None else names)
    pred = p >= np.asarray(threshold, dtype=np.float64)
    tp = (w * (pred & y)).sum(1)
    fp = (w * (pred & ~y)).sum(1)
    fn = (w * (~pred & y)).sum(1)
    tn = (w * (~pred & ~y)).sum(1)
    pos, neg = tp + fn, tn + fp
    if "auroc" not in want:
        u = np.full(len(tp), np.nan)
    elif weights is not None:
        u = _weighted_mann_whitney(y[0], p[0], w)
    else:
        ranks = rankdata(p, axis=1)  # average ranks for ties, as the Mann-Whitney U needs
        u = (ranks * y).sum(1) - pos * (pos + 1) / 2
    costly = {"auprc": clinical.average_precision, "ece": clinical.ece,
              "calibration_intercept": clinical.calibration_intercept, "calibration_slope": clinical.calibration_slope}
    extra = {name: _rows(fn, y, p, w if weights is not None else None) if name in want else np.full(len(tp), np.nan)
             for name, fn in costly.items()}
    return {**confusion_scores(tp, fp, fn, tn), "auroc": _safe_div(u, pos * neg),
            "brier": _safe_div((w * (p - y) ** 2).sum(1), w.sum(1)), **extra}


def confusion_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """The threshold scores of :func:`scores` from each row's (weighted) confusion counts: a cluster bootstrap
    sums the counts per person once and each resample's counts are a product (:func:`draw_scores`)."""
    pos, neg = tp + fn, tn + fp
    tpr, tnr = _safe_div(tp, pos), _safe_div(tn, neg)
    f1_pos = np.nan_to_num(_safe_div(2 * tp, 2 * tp + fp + fn), nan=0.0)
    f1_neg = np.nan_to_num(_safe_div(2 * tn, 2 * tn + fn + fp), nan=0.0)
    recalls = np.stack([tpr, tnr])
    present = np.isfinite(recalls).sum(0)  # the recalls of the classes present (none: NaN)
    with np.errstate(invalid="ignore", divide="ignore"):
        balanced = np.where(present > 0, np.nansum(recalls, axis=0) / np.maximum(present, 1), np.nan)
    return {
        "accuracy": _safe_div(tp + tn, pos + neg),
        "balanced_accuracy": balanced,
        "f1": f1_pos,
        "f1_macro": (f1_pos + f1_neg) / 2,
        "tpr": tpr,
        "fpr": _safe_div(fp, neg),
        "sensitivity": tpr,
        "specificity": tnr,
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
    }


def _rows(score, y: np.ndarray, p: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """A :mod:`covfuse.training.clinical` score (one prediction set, B weightings) of each weighting ``w``
    of ``y[0]``/``p[0]``; without weights, of each row of ``y``/``p`` on its own."""
    if w is not None:
        return score(y[0], p[0], w)
    return np.concatenate([score(yy, pp, np.ones((1, len(yy)))) for yy, pp in zip(y, p)]) if len(y) else np.zeros(0)


def multiclass_scores(labels: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None,
                      num_classes: int | None = None, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of the predicted classes, one value per row of ``weights``
    (B, N) (see :func:`scores`; None: one unweighted row). ``predicted`` holds class probabilities (N, C)
    (the predicted class is the most probable; AUPRC, Brier and ECE are read from the probabilities) or
    class indices (N,) (those three are then NaN). ``names`` as in :func:`scores`.

    Conventions follow sklearn: balanced accuracy averages the recall of the classes that occur in
    ``labels``; macro-F1 averages F1 over the classes that occur in ``labels`` or ``predicted``.
    One weighted confusion matrix per row gives all three. AUPRC is the mean over the classes that
    occur of each class's average precision against the rest; ECE is the top class's
    (:mod:`covfuse.training.clinical`).
    """
    want = set(TASK_SCORES["multiclass"] if names is None else names)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(predicted, dtype=np.float64)
    p = (probs.argmax(1) if probs.ndim == 2 else probs).astype(np.int64).reshape(-1)
    c = int(num_classes or (max(int(y.max(initial=0)), int(p.max(initial=0))) + 1))
    w = weight_rows(len(y), weights)
    cell = csr_matrix((np.ones(len(y)), (np.arange(len(y)), y * c + p)), shape=(len(y), c * c))
    out = class_confusion_scores(np.asarray((cell.T @ w.T).T).reshape(len(w), c, c))
    for name in MULTICLASS_PROBABILITY_SCORES:
        out[name] = np.full(len(w), np.nan)
    if probs.ndim == 2:
        if "brier" in want:
            out["brier"] = clinical.brier(y, probs, w)
        if "ece" in want:
            out["ece"] = clinical.ece(*clinical.top_class(y, probs), w)
        if "auprc" in want:
            per_class = [clinical.average_precision(y == k, probs[:, k], w) for k in range(probs.shape[1])]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any class: NaN
                out["auprc"] = np.nanmean(np.stack(per_class), axis=0) if per_class else out["auprc"]
    return out


def class_confusion_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 of :func:`multiclass_scores` from each row's (weighted)
    confusion matrix (B, true, predicted)."""
    tp = np.diagonal(conf, axis1=1, axis2=2)
    true, pred = conf.sum(2), conf.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a row without any class: NaN
        recall = np.where(true > 0, tp / np.where(true > 0, true, 1), np.nan)
        f1 = np.where(true + pred > 0, 2 * tp / np.where(true + pred > 0, true + pred, 1), np.nan)
        balanced = np.nanmean(recall, axis=1) if conf.shape[1] else np.full(len(conf), np.nan)
        f1_macro = np.nanmean(f1, axis=1)
    return {"accuracy": _safe_div(tp.sum(1), conf.sum((1, 2))), "balanced_accuracy": balanced, "f1_macro": f1_macro}


def regression_scores(targets: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """MAE, RMSE and R^2 of predicted values, one per row of ``weights`` (B, N) (sklearn's weighted
    definitions: R^2 = 1 - sum w e^2 / sum w (y - weighted mean y)^2)."""
    y = np.asarray(targets, dtype=np.float64).reshape(1, -1)
    e = np.asarray(predicted, dtype=np.float64).reshape(1, -1) - y
    w = weight_rows(y.shape[1], weights)
    total = w.sum(1)
    mean = _safe_div((w * y).sum(1), total)
    sse = (w * e ** 2).sum(1)
    sst = (w * (y - mean[:, None]) ** 2).sum(1)
    return {"mae": _safe_div((w * np.abs(e)).sum(1), total), "rmse": np.sqrt(_safe_div(sse, total)),
            "r2": 1 - _safe_div(sse, sst)}


def task_scores(task: str, labels: np.ndarray, outputs: np.ndarray, *, weights: np.ndarray | None = None,
                threshold: float | np.ndarray = 0.5, names: Collection[str] | None = None,
                num_classes: int | None = None, reference=None) -> dict[str, np.ndarray]:
    """The scores of ``task`` for one set of per-sample ``outputs`` (binary: P(positive), positive at
    ``>= threshold``; multiclass: class probabilities (N, C) or predicted class; regression: predicted
    value; survival: risk, with (N, 2) [time, event] labels and the training split's ``reference``,
    :class:`covfuse.training.survival_reference.Reference`), one value per row of ``weights``.
    ``names``: the scores needed (default: all; see :func:`scores`)."""
    if task == "binary":
        return scores(labels, outputs, threshold, weights=weights, names=names)
    if task == "multiclass":
        return multiclass_scores(labels, outputs, weights, num_classes, names)
    if task == "regression":
        return regression_scores(labels, outputs, weights)
    if task == "survival":
        return survival_scores(labels, outputs, weights, reference=reference)
    raise ValueError(f"unknown task {task!r}")


def _weighted_mann_whitney(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney U of one prediction set under B weightings: sum over positives of the weight of
    negatives scored lower (ties count half). The scores are sorted once and shared by all rows."""
    values, block = np.unique(p, return_inverse=True)
    member = csr_matrix((np.ones(len(p)), (np.arange(len(p)), block)), shape=(len(p), len(values)))
    pos_w = np.asarray((member.T @ (w * y).T).T)  # (B, distinct scores): positive weight per score
    neg_w = np.asarray((member.T @ (w * ~y).T).T)
    below = np.cumsum(neg_w, axis=1) - neg_w
    return (pos_w * (below + 0.5 * neg_w)).sum(1)


def cluster_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Integer cluster codes 0..G-1 for ``groups`` (any labels); None: every sample its own.

    The clusters are numbered in the labels' natural order, numbers by value, whether they come as numbers
    (a run's CelebA identities) or as the text predictions.csv holds ("2880"): a run and the study report
    then number the people alike and draw the same resamples, so a run has one interval."""
    if groups is None:
        return np.arange(n)
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    values, codes = np.unique(groups.astype(str), return_inverse=True)
    try:
        number = np.array([float(v) for v in values])
    except ValueError:  # names (sub-01, s1): their text order
        return codes.reshape(-1)
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.lexsort((values, number))] = np.arange(len(values))
    return rank[codes.reshape(-1)]


def resample_weights(codes: np.ndarray, n_boot: int, seed: int, chunk_cells: int = 4_000_000):
    """Yield (b, N) weight chunks of a cluster bootstrap: each resample draws G clusters with
    replacement, and a sample's weight is how often its cluster was drawn (1 cluster per sample:
    the ordinary bootstrap). Draws come from ``default_rng(seed).integers(0, G, (n_boot, G))``,
    chunk by chunk, so an independent loop over the same draws reproduces every resample."""
    codes = np.asarray(codes)
    for counts in resample_counts(codes, n_boot, seed, chunk_cells):
        yield counts[:, codes].astype(np.float64)


def resample_counts(codes: np.ndarray, n_boot: int, seed: int, chunk_cells: int = 4_000_000):
    """Yield (b, G) chunks of how often each cluster is drawn in each resample: the draws of
    :func:`resample_weights` (the same chunks of the same generator) before they are spread over the
    samples, for scores that are sums over people (:func:`draw_scores`)."""
    codes = np.asarray(codes)
    num_clusters = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    chunk = max(1, chunk_cells // max(len(codes), num_clusters, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        drawn = rng.integers(0, num_clusters, size=(b, num_clusters))
        flat = (drawn + num_clusters * np.arange(b)[:, None]).ravel()
        yield np.bincount(flat, minlength=b * num_clusters).reshape(b, num_clusters)


SUMMED = {
    "binary": frozenset({*THRESHOLD_SCORES, "tpr", "fpr", "brier", "ece"}),
    "multiclass": frozenset({"accuracy", "balanced_accuracy", "f1_macro", "brier", "ece"}),
    "regression": frozenset({"mae", "rmse", "r2"}),
}
"""The scores that are functions of sums over the samples: a resample's value needs only each person's sums
and how often the person was drawn (:func:`draw_scores`). The others (ranks: AUROC, AUPRC; fits: the
calibration intercept and slope; survival scores) weight every sample of every resample."""


def _onehot_sums(codes: np.ndarray, clusters: int, slot: np.ndarray, k: int, values=None) -> np.ndarray:
    """Per person, the sum of ``values`` (default 1) of their samples in each of ``k`` slots: (G, k)."""
    flat = np.bincount(codes * k + slot, weights=values, minlength=clusters * k)
    return flat.reshape(clusters, k)


def _per_person(task: str, y: np.ndarray, out: np.ndarray, threshold, codes: np.ndarray, clusters: int,
                num_classes: int | None) -> tuple[np.ndarray, object]:
    """Per person, the sums whose totals give the :data:`SUMMED` scores (G, k), and what :func:`_from_sums`
    needs to read them back."""
    def summed(col):
        return np.bincount(codes, weights=col, minlength=clusters)[:, None]

    if task == "binary":
        p = np.asarray(out, dtype=np.float64)
        pred = p >= np.asarray(threshold, dtype=np.float64)
        cell = 2 * (~pred) + (~y)  # tp, fp, fn, tn
        return np.hstack([_onehot_sums(codes, clusters, cell.astype(np.int64), 4), summed((p - y) ** 2),
                          _onehot_sums(codes, clusters, clinical.bin_index(p), clinical.ECE_BINS, y - p)]), None
    if task == "multiclass":
        probs = np.asarray(out, dtype=np.float64)
        truth = y.astype(np.int64)
        pred = probs.argmax(1) if probs.ndim == 2 else probs.astype(np.int64)
        c = int(num_classes or (probs.shape[1] if probs.ndim == 2 else max(truth.max(initial=0), pred.max(initial=0)) + 1))
        parts = [_onehot_sums(codes, clusters, truth * c + pred, c * c)]
        if probs.ndim == 2:
            outcome, confidence = clinical.top_class(truth, probs)
            sq = (probs ** 2).sum(1) - 2 * probs[np.arange(len(truth)), truth] + 1  # sum over classes of (p - onehot)^2
            parts += [summed(sq), _onehot_sums(codes, clusters, clinical.bin_index(confidence), clinical.ECE_BINS,
                                               outcome - confidence)]
        return np.hstack(parts), (c, probs.ndim == 2)
    centre = float(np.mean(y))  # sums of (y - mean)^2 taken around the data's own mean, for their precision
    e = np.asarray(out, dtype=np.float64) - y
    return np.hstack([summed(np.ones(len(y))), summed(np.abs(e)), summed(e ** 2), summed(y - centre),
                      summed((y - centre) ** 2)]), None


def _from_sums(task: str, t: np.ndarray, layout) -> dict[str, np.ndarray]:
    """The :data:`SUMMED` scores of each row of totals ``t`` (B, k) of :func:`_per_person`."""
    if task == "binary":
        n = t[:, :4].sum(1)
        return {**confusion_scores(*t[:, :4].T), "brier": _safe_div(t[:, 4], n),
                "ece": _safe_div(np.abs(t[:, 5:]).sum(1), n)}
    if task == "multiclass":
        c, probabilities = layout
        conf = t[:, :c * c].reshape(len(t), c, c)
        out = class_confusion_scores(conf)
        n = conf.sum((1, 2))
        nan = np.full(len(t), np.nan)
        out["brier"] = _safe_div(t[:, c * c], n) if probabilities else nan
        out["ece"] = _safe_div(np.abs(t[:, c * c + 1:]).sum(1), n) if probabilities else nan
        return out
    n, abs_e, sq_e, y, y2 = t.T
    sst = y2 - _safe_div(y * y, n)
    sst = np.where(sst > 1e-12 * y2, sst, 0.0)  # all drawn targets equal: rounding, not spread
    return {"mae": _safe_div(abs_e, n), "rmse": np.sqrt(_safe_div(sq_e, n)), "r2": 1 - _safe_div(sq_e, sst)}


def draw_scores(task: str, labels: np.ndarray, runs: Sequence[np.ndarray], codes: np.ndarray, names: Sequence[str], *,
                n_boot: int, seed: int, thresholds: Sequence | None = None, references: Sequence | None = None,
                num_classes: int | None = None) -> dict[str, np.ndarray]:
    """Each of ``names`` on ``n_boot`` cluster-bootstrap resamples (:func:`resample_counts`), averaged over
    the ``runs`` (per-sample outputs of runs scored on the same samples; run r with ``thresholds[r]`` and
    ``references[r]``): ``{name: (n_boot,)}``.

    A :data:`SUMMED` score sums each run's per-sample quantities per person once, and every resample's sums
    are one matrix product of the draw counts (B, G) with them: no sample is touched per resample. The other
    scores weight every sample of every resample (:func:`task_scores`). Both give what scoring each resample
    on its own would (tests/training/test_resampling.py)."""
    y = np.asarray(labels).astype(bool) if task == "binary" else np.asarray(labels)
    runs = list(runs)
    thresholds = list(thresholds) if thresholds is not None else [0.5] * len(runs)
    references = list(references) if references is not None else [None] * len(runs)
    summed = [n for n in names if n in SUMMED.get(task, ())]
    rest = [n for n in names if n not in summed]
    clusters = int(codes.max()) + 1 if len(codes) else 0
    if summed:
        parts = [_per_person(task, y, out, t, codes, clusters, num_classes) for out, t in zip(runs, thresholds)]
        per_person = [sums for sums, _ in parts]
        widths = np.cumsum([0] + [m.shape[1] for m in per_person])
        stacked = np.concatenate(per_person, axis=1)  # (G, sum of k): every run in one product
    draws: dict[str, list[np.ndarray]] = {name: [] for name in names}
    extra = (lambda r: {"reference": r}) if task == "survival" else (lambda r: {})  # noqa: E731
    for counts in resample_counts(codes, n_boot, seed):
        if summed:
            totals = counts.astype(np.float64) @ stacked
            scored = [_from_sums(task, totals[:, widths[r]:widths[r + 1]], parts[r][1]) for r in range(len(runs))]
            for name in summed:
                draws[name].append(np.mean([s[name] for s in scored], axis=0))
        if rest:
            w = counts[:, codes].astype(np.float64)
            scored = [task_scores(task, y, out, weights=w, threshold=t, names=rest, num_classes=num_classes, **extra(ref))
                      for out, t, ref in zip(runs, thresholds, references)]
            for name in rest:
                draws[name].append(np.mean([s[name] for s in scored], axis=0))
    return {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in draws.items()}


def bootstrap_interval(estimate: float, draws: np.ndarray, clusters: int, level: float = 0.95,
                       bounds: tuple[float, float] | None = (0.0, 1.0)) -> tuple[list[float | None], float | None]:
    """``([lo, hi], se)``: ``estimate ± t(G-1) * se`` with ``se`` the bootstrap standard error times
    sqrt(G/(G-1)), clipped to ``bounds``. The corrections are those of cluster-robust errors with
    G clusters: with ~40 people the plain percentile interval covered the truth 91.8-92.4% of the
    time in tests/studies/test_stats.py's simulation, this one 93.4-93.6%; with one cluster per image
    (G large) it is the usual normal interval. Undefined draws (a one-class resample's AUROC) are
    left out."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if clusters < 2 or len(draws) < 2 or not np.isfinite(estimate):
        return [None, None], None
    se = float(draws.std(ddof=1)) * float(np.sqrt(clusters / (clusters - 1)))
    half = float(t_dist.ppf(1 - (1 - level) / 2, clusters - 1)) * se
    lo, hi = estimate - half, estimate + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return [float(lo), float(hi)], se


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str] = SCORES,
    *,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    threshold: float = 0.5,
    task: str = "binary",
    num_classes: int | None = None,
    reference=None,
) -> dict[str, list[float | None]]:
    """Bootstrap intervals ``{name: [lo, hi]}`` of the named scores (seeded, vectorised; see
    :func:`bootstrap_interval`).

    With ``groups`` (CelebA identity, MRI subject) whole groups are resampled (cluster bootstrap):
    images of one person are not independent, and resampling them one by one gives intervals that
    are too narrow. All scores share the same resamples; resamples where a score is undefined
    (e.g. AUROC of a one-class resample) are left out of that score's interval. ``probs`` holds
    the per-sample outputs :func:`task_scores` reads for ``task``.
    """
    y = np.asarray(labels) if task != "binary" else np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0 or n_boot <= 0:
        return {name: [None, None] for name in names}
    codes = cluster_codes(groups, len(y))
    kw = {"threshold": threshold, "names": names, "num_classes": num_classes,
          **({"reference": reference} if task == "survival" else {})}
    point = task_scores(task, y, p, **kw)
    draws = draw_scores(task, y, [p], codes, names, n_boot=n_boot, seed=seed, thresholds=[threshold],
                        references=[reference], num_classes=num_classes)
    clusters = int(codes.max()) + 1
    return {name: bootstrap_interval(float(point[name][0]), draws[name], clusters, level, bounds=score_bounds(name))[0]
            for name in names}


def missing_reason(task: str, name: str, labels: np.ndarray, reference=None) -> str:
    """Why score ``name`` of ``task`` is undefined (NaN) on these labels, in words: metrics.json writes
    it as ``<name>_reason`` beside the null, the log and the study report repeat it."""
    if task == "survival":
        return survival_missing_reason(name, labels, reference)
    y = np.asarray(labels)
    if not len(y):
        return "no samples"
    if name in ("auroc", "tpr", "fpr", "calibration_intercept", "calibration_slope") and y.ndim == 1 \
            and len(np.unique(y)) < 2:
        present = "positive" if y.astype(bool).all() else "negative"
        return f"only {present} samples here ({name} needs both classes)"
    if task == "binary" and y.ndim == 1 and name in ("auprc", "sensitivity") and not y.astype(bool).any():
        return f"no positive samples here ({name} needs one)"
    if task == "binary" and y.ndim == 1 and name == "specificity" and y.astype(bool).all():
        return "no negative samples here (specificity needs one)"
    if name in ("ppv", "npv"):
        side = "positive" if name == "ppv" else "negative"
        return f"no sample predicted {side} at the threshold ({name} divides by them)"
    if name == "r2":
        return "the target is constant here (R² divides by its variance)"
    return f"{name} is undefined on these predictions"


def interval_reason(n_boot: int, clusters: int) -> str:
    """Why a finite score has no bootstrap interval (``<name>_ci`` is [null, null])."""
    if n_boot <= 0:
        return "no bootstrap asked for (bootstrap: 0)"
    if clusters < 2:
        return f"{clusters} {'person' if clusters == 1 else 'people'} (cluster): an interval needs two"
    return "fewer than two bootstrap resamples where the score is defined"


def explain_missing(entry: dict, names: Sequence[str], why, n_boot: int, clusters: int) -> dict:
    """``entry`` with ``<name>_reason`` beside every null score (``why(name)`` says it) and
    ``<name>_ci_reason`` beside a finite score's null interval: a missing number always has a reason."""
    for name in names:
        if name in entry and entry[name] is None:
            entry[f"{name}_reason"] = why(name)
        elif entry.get(f"{name}_ci", [0, 0])[0] is None:
            entry[f"{name}_ci_reason"] = interval_reason(n_boot, clusters)
    return entry


def _number(value: float) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    value = float(value)
    return value if math.isfinite(value) else None


SUBGROUP_STATS = {"binary": ("accuracy", "tpr", "fpr"), "multiclass": ("accuracy", "balanced_accuracy"),
                  "regression": ("mae", "rmse"), "survival": ("c_index",)}
"""Per-subgroup statistics of each task; the first gets a CI, and each gets a gap across subgroups."""


def group_table(
    labels: np.ndarray,
    probs: np.ndarray,
    covariates: Mapping[str, Grouping | np.ndarray],
    *,
    clusters: np.ndarray | None = None,
    pairs: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    task: str = "binary",
    num_classes: int | None = None,
    reference=None,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-subgroup metrics for every group of every covariate, and of every pair of covariates.

    ``covariates`` maps a name to its :class:`~covfuse.data.groups.Grouping` (groups in the data's
    units: :func:`covfuse.data.groups.covariate_groups`) or to plain values, grouped one group per
    value (an array with more than :data:`covfuse.data.groups.MAX_GROUP_VALUES` values is left out).

    Returns ``(groups, gaps)``. ``groups`` maps ``"Male=1"`` or ``"Male=1&Young=0"`` to the group's
    ``count`` and :data:`SUBGROUP_STATS` of the task, the first with a ``<name>_ci`` (resampling
    ``clusters`` when given, as :func:`bootstrap_ci` does); binary groups add ``positives`` and
    ``auroc`` (``auroc``, ``tpr`` and ``fpr`` are None where the group lacks the needed class).
    ``gaps`` maps ``"Male"`` or ``"Male&Young"`` to the largest minus the smallest value of each
    statistic over that covariate's groups.
    """
    y = np.asarray(labels) if task != "binary" else np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    stats = SUBGROUP_STATS[task]
    discrete = as_groupings(covariates)
    keys: list[tuple[str, ...]] = [(name,) for name in discrete]
    if pairs:
        keys += list(itertools.combinations(discrete, 2))
    groups: dict[str, dict] = {}
    gaps: dict[str, dict] = {}
    for key in keys:
        columns = np.stack([discrete[name].codes for name in key], axis=1)
        members: list[dict] = []
        for combo in np.unique(columns, axis=0):
            mask = (columns == combo).all(axis=1)
            label = "&".join(discrete[name].key(name, c) for name, c in zip(key, combo))
            s = {k: float(v[0]) for k, v in task_scores(task, y[mask], p[mask], threshold=threshold,
                                                         names=(*stats, "auroc"), num_classes=num_classes,
                                                         reference=reference).items()}
            entry: dict = {"count": int(mask.sum())}
            if task == "binary":
                entry["positives"] = int(y[mask].sum())
            entry[stats[0]] = _number(s[stats[0]])
            entry[f"{stats[0]}_ci"] = bootstrap_ci(
                y[mask], p[mask], [stats[0]], groups=None if clusters is None else clusters[mask], n_boot=n_boot,
                seed=seed, threshold=threshold, task=task, num_classes=num_classes, reference=reference)[stats[0]]
            for stat in stats[1:]:
                entry[stat] = _number(s[stat])
            if task == "binary":
                entry["auroc"] = _number(s["auroc"])  # None unless both classes occur in the group
            size = len(np.unique(clusters[mask])) if clusters is not None else int(mask.sum())
            groups[label] = explain_missing(entry, [*stats, "auroc"],
                                            lambda name: missing_reason(task, name, y[mask], reference), n_boot, size)
            members.append(entry)
        gap: dict[str, float | None] = {}
        for stat in stats:
            values = [m[stat] for m in members if m[stat] is not None]
            gap[stat] = float(max(values) - min(values)) if len(values) >= 2 else None
            if gap[stat] is None:
                gap[f"{stat}_reason"] = f"{stat} is defined in {len(values)} of its subgroups; a gap needs two"
        gaps["&".join(key)] = gap
    return groups, gaps


def split_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    covariates: Mapping[str, np.ndarray] | None = None,
    *,
    clusters: np.ndarray | None = None,
    loss: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    task: str = "binary",
    reference=None,
) -> dict:
    """The metrics.json entry of one split: scores with CIs, counts, subgroup tables and gaps.

    ``probs``: P(positive) (N,) for a binary run (positive at ``>= threshold``, recorded as the split's
    ``threshold``), class probabilities (N, C) for a multi-class run (the predicted class is the argmax),
    predicted values (N,) for regression, risk scores (N,) against (N, 2)
    ``[time, event]`` labels for survival. ``clusters`` (one label per
    sample: identity, subject) makes every interval a cluster bootstrap, recorded as
    ``ci_method: cluster`` with the number of clusters; without it the samples are resampled one by
    one (``ci_method: image``).
    """
    y = np.asarray(labels) if task != "binary" else np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    num_classes = p.shape[1] if task == "multiclass" else None
    names = TASK_SCORES[task]
    clusters = None if clusters is None else np.asarray(clusters)
    point = {k: float(v[0]) for k, v in task_scores(task, y, p, threshold=threshold, num_classes=num_classes,
                                                    reference=reference).items()}
    cis = bootstrap_ci(y, p, names, groups=clusters, n_boot=n_boot, seed=seed, threshold=threshold, task=task,
                       num_classes=num_classes, reference=reference)
    out: dict = {"count": int(len(y)),
                 "ci_method": "image" if clusters is None else "cluster",
                 "clusters": int(len(np.unique(clusters))) if clusters is not None else int(len(y))}
    if task == "binary":
        out["positive_rate"] = _number(y.mean()) if len(y) else None
        out["threshold"] = float(threshold)
    elif task == "multiclass":
        out["class_counts"] = np.bincount(y.astype(np.int64), minlength=num_classes).tolist()
    elif task == "survival":
        out.update(survival_details(y, p, reference))
    else:
        out["target_mean"], out["target_sd"] = _number(y.mean()), _number(y.std(ddof=1)) if len(y) > 1 else None
    if loss is not None:
        out["loss"] = _number(loss)
    for name in names:
        out[name] = _number(point[name])
        out[f"{name}_ci"] = cis[name]
    if task == "binary":
        out["tpr"], out["fpr"] = _number(point["tpr"]), _number(point["fpr"])
    explain_missing(out, [*names, "tpr", "fpr", "loss"], lambda name: missing_reason(task, name, y, reference), n_boot,
                    out["clusters"])
    groups, gaps = group_table(y, p, covariates or {}, clusters=clusters, n_boot=n_boot, seed=seed, threshold=threshold,
                               task=task, num_classes=num_classes, reference=reference)
    out["groups"] = groups
    out["gaps"] = gaps
    return out


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean cross-entropy of probabilities, clipped like sklearn's ``log_loss``: binary for (N,)
    P(positive), multi-class for (N, C) class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2:
        picked = probs[np.arange(len(probs)), np.asarray(labels).astype(np.int64)]
        return float(-np.log(np.clip(picked, eps, 1)).mean()) if len(picked) else float("nan")
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean()) if len(y) else float("nan")
