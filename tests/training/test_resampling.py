"""The bootstrap engine (`metrics.draw_scores`): scores that are sums over samples come from per-person sums and
one product for all resamples; each must equal scoring every resample on its own, people drawn explicitly
and scored by scikit-learn, averaged over runs with their own thresholds."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from covfuse.training import clinical
from covfuse.training.metrics import SUMMED, cluster_codes, draw_scores, resample_weights, task_scores

B, SEED = 60, 7


def _people(rng, n_people=30):
    sizes = rng.integers(1, 12, n_people)
    groups = np.repeat([f"p{k}" for k in range(n_people)], sizes)
    return groups, len(groups)


def _resampled(groups, n_boot, seed):
    """Independent reference: the same draws of people (numbered as the engine numbers them), as index lists."""
    codes = cluster_codes(groups, len(groups))
    members = [np.flatnonzero(codes == k) for k in range(codes.max() + 1)]
    drawn = np.random.default_rng(seed).integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[k] for k in row]) for row in drawn]


def _ece(outcome, confidence):
    bins = clinical.bin_index(confidence)
    return sum(abs((outcome[bins == b] - confidence[bins == b]).sum()) for b in range(clinical.ECE_BINS)) / len(outcome)


def _check(task, y, runs, groups, refs, **kw):
    names = sorted(refs)
    codes = cluster_codes(groups, len(y))
    fast = draw_scores(task, y, runs, codes, names, n_boot=B, seed=SEED, **kw)
    loop = {name: [np.mean([refs[name](i, r) for r in range(len(runs))]) for i in _resampled(groups, B, SEED)]
            for name in names}
    for name in names:
        np.testing.assert_allclose(fast[name], loop[name], rtol=0, atol=1e-10, err_msg=name)
    return fast


def test_binary_sums_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(0)
    groups, n = _people(rng)
    y = rng.random(n) < 0.4
    runs = [np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1) for _ in range(3)]
    thresholds = [0.5, np.full(n, 0.42), 0.6]
    t = [np.broadcast_to(th, (n,)) for th in thresholds]

    def pred(i, r):
        return runs[r][i] >= t[r][i]

    refs = {"accuracy": lambda i, r: skm.accuracy_score(y[i], pred(i, r)),
            "balanced_accuracy": lambda i, r: skm.balanced_accuracy_score(y[i], pred(i, r)),
            "f1": lambda i, r: skm.f1_score(y[i], pred(i, r), zero_division=0.0),
            "f1_macro": lambda i, r: skm.f1_score(y[i], pred(i, r), average="macro", labels=[0, 1], zero_division=0.0),
            "sensitivity": lambda i, r: skm.recall_score(y[i], pred(i, r)),
            "specificity": lambda i, r: skm.recall_score(~y[i], ~pred(i, r)),
            "ppv": lambda i, r: skm.precision_score(y[i], pred(i, r), zero_division=np.nan),
            "npv": lambda i, r: skm.precision_score(~y[i], ~pred(i, r), zero_division=np.nan),
            "brier": lambda i, r: skm.brier_score_loss(y[i], runs[r][i]),
            "ece": lambda i, r: _ece(y[i].astype(float), runs[r][i])}
    assert set(refs) <= SUMMED["binary"]
    fast = _check("binary", y, runs, groups, refs, thresholds=thresholds)
    as_numbers = draw_scores("binary", y.astype(int), runs, cluster_codes(groups, n), sorted(refs), n_boot=B, seed=SEED,
                             thresholds=thresholds)  # 0/1 labels as a CSV gives them: the same draws
    for name in refs:
        np.testing.assert_array_equal(as_numbers[name], fast[name])


def test_multiclass_sums_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(1)
    groups, n = _people(rng)
    y = rng.integers(0, 4, n)
    runs = [rng.dirichlet(np.ones(4), n) * 0.5 + 0.5 * np.eye(4)[y] * rng.random((n, 1)) for _ in range(2)]
    runs = [r / r.sum(1, keepdims=True) for r in runs]

    def top(i, r):
        return runs[r][i].argmax(1)

    refs = {"accuracy": lambda i, r: skm.accuracy_score(y[i], top(i, r)),
            "balanced_accuracy": lambda i, r: skm.balanced_accuracy_score(y[i], top(i, r)),
            "f1_macro": lambda i, r: skm.f1_score(y[i], top(i, r), average="macro", zero_division=0.0),
            "brier": lambda i, r: np.mean(((runs[r][i] - np.eye(4)[y[i]]) ** 2).sum(1)),
            "ece": lambda i, r: _ece((top(i, r) == y[i]).astype(float), runs[r][i].max(1))}
    _check("multiclass", y, runs, groups, refs, num_classes=4)


def test_regression_sums_equal_sklearn_on_each_resample():
    rng = np.random.default_rng(2)
    groups, n = _people(rng)
    y = 70 + rng.normal(0, 3, n)  # ages: a large mean and a small spread
    runs = [y + rng.normal(0, 2, n) for _ in range(2)]
    refs = {"mae": lambda i, r: skm.mean_absolute_error(y[i], runs[r][i]),
            "rmse": lambda i, r: np.sqrt(skm.mean_squared_error(y[i], runs[r][i])),
            "r2": lambda i, r: skm.r2_score(y[i], runs[r][i])}
    _check("regression", y, runs, groups, refs)


def test_summed_and_weighted_scores_share_the_resamples():
    """One call with a summed score and one scored per sample (AUROC): both on the same people, as
    `task_scores` on the weights of `resample_weights` gives them."""
    rng = np.random.default_rng(3)
    groups, n = _people(rng)
    y = rng.random(n) < 0.5
    p = np.round(rng.random(n), 2)
    codes = cluster_codes(groups, n)
    fast = draw_scores("binary", y, [p], codes, ["accuracy", "auroc"], n_boot=B, seed=SEED)
    weighted = {name: np.concatenate([task_scores("binary", y, p, weights=w, names=[name])[name]
                                      for w in resample_weights(codes, B, SEED)]) for name in ("accuracy", "auroc")}
    np.testing.assert_allclose(fast["accuracy"], weighted["accuracy"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fast["auroc"], weighted["auroc"])
    loop = [skm.roc_auc_score(y[i], p[i]) if len(set(y[i])) == 2 else np.nan for i in _resampled(groups, B, SEED)]
    np.testing.assert_allclose(fast["auroc"], loop, rtol=0, atol=1e-12)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_resample_of_one_person_gives_what_the_per_sample_path_gives(task):
    """Edge: one person (every resample the same people): undefined scores NaN on both paths, as sklearn's."""
    y = np.array([True, True, False]) if task == "binary" else np.array([5.0, 5.0, 5.0])
    out = np.array([0.9, 0.2, 0.4]) if task == "binary" else np.array([5.0, 4.0, 6.0])
    codes = np.zeros(3, dtype=np.int64)
    names = sorted(SUMMED[task])
    fast = draw_scores(task, y, [out], codes, names, n_boot=4, seed=0)
    per_sample = task_scores(task, y, out, weights=np.ones((4, 3)), names=names)
    for name in names:
        np.testing.assert_allclose(fast[name], per_sample[name], rtol=0, atol=1e-12, err_msg=name)
