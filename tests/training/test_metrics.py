"""Metrics, bootstrap CIs, subgroup tables and paired tests against sklearn and hand computation."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import t as t_dist
from sklearn import metrics as skm

from covfuse.studies.stats import paired_cluster_bootstrap
from covfuse.training.metrics import bootstrap_ci, cluster_codes, group_table, log_loss, scores, split_metrics


def _fixed(n=257, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(0.5 * y + rng.normal(0.25, 0.25, n), 0, 1), 2)  # rounding makes ties
    return y, p


def _sklearn(y, p):
    pred = p >= 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "f1": skm.f1_score(y, pred, zero_division=0),
            "f1_macro": skm.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0),
            "auroc": skm.roc_auc_score(y, p) if len(set(y)) == 2 else float("nan"),
        }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed):
    y, p = _fixed(seed=seed)
    ours = {k: float(v[0]) for k, v in scores(y, p).items()}
    for name, value in _sklearn(y, p).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    tn, fp, fn, tp = skm.confusion_matrix(y, p >= 0.5).ravel()
    assert ours["tpr"] == pytest.approx(tp / (tp + fn))
    assert ours["fpr"] == pytest.approx(fp / (fp + tn))


def test_scores_rows_are_independent_and_edge_cases_follow_sklearn():
    y, p = _fixed(40)
    rows_y = np.stack([y, np.ones_like(y), np.zeros_like(y)])
    rows_p = np.stack([p, p, np.zeros_like(p)])  # row 2: all negative, all predicted negative
    batch = scores(rows_y, rows_p)
    for i in range(3):
        ref = _sklearn(rows_y[i], rows_p[i])
        for name, value in ref.items():
            if math.isnan(value):
                assert math.isnan(batch[name][i]), (i, name)
            else:
                assert batch[name][i] == pytest.approx(value), (i, name)


def test_bootstrap_ci_equals_a_sklearn_loop_over_the_same_resamples():
    y, p = _fixed(120)
    ours = bootstrap_ci(y, p, ["accuracy", "auroc", "f1"], n_boot=200, seed=7)
    idx = np.random.default_rng(7).integers(0, len(y), size=(200, len(y)))  # same draws, one chunk
    n = len(y)
    half = lambda d: t_dist.ppf(0.975, n - 1) * np.std(d, ddof=1) * np.sqrt(n / (n - 1))  # noqa: E731
    for name, score in (("accuracy", lambda i: skm.accuracy_score(y[i], p[i] >= 0.5)),
                        ("auroc", lambda i: skm.roc_auc_score(y[i], p[i])),
                        ("f1", lambda i: skm.f1_score(y[i], p[i] >= 0.5))):
        est, h = score(slice(None)), half([score(i) for i in idx])
        assert ours[name] == pytest.approx([max(0, est - h), min(1, est + h)]), name


def test_bootstrap_ci_is_seeded_covers_the_estimate_and_narrows_with_n():
    y, p = _fixed(400)
    a = bootstrap_ci(y, p, ["accuracy"], n_boot=300, seed=1)["accuracy"]
    assert a == bootstrap_ci(y, p, ["accuracy"], n_boot=300, seed=1)["accuracy"]
    acc = skm.accuracy_score(y, p >= 0.5)
    assert a[0] < acc < a[1]
    small = bootstrap_ci(y[:50], p[:50], ["accuracy"], n_boot=300, seed=1)["accuracy"]
    assert (small[1] - small[0]) > (a[1] - a[0])
    assert bootstrap_ci(y[:0], p[:0], ["accuracy"])["accuracy"] == [None, None]


def test_group_table_on_a_hand_made_example():
    #            0    1    2    3    4    5    6    7
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0])
    p = np.array([.9, .2, .4, .6, .8, .7, .1, .3])  # pred: 1 0 0 1 1 1 0 0
    male = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    young = np.array([1, 0, 1, 0, 1, 1, 1, 0])
    groups, gaps = group_table(y, p, {"Male": male, "Young": young}, n_boot=50)
    m1 = groups["Male=1"]  # samples 0-3: right, right, wrong (fn), wrong (fp)
    assert (m1["count"], m1["positives"], m1["accuracy"], m1["tpr"], m1["fpr"]) == (4, 2, 0.5, 0.5, 0.5)
    assert m1["auroc"] == pytest.approx(skm.roc_auc_score(y[:4], p[:4]))  # 0.75
    m0 = groups["Male=0"]  # samples 4-7: all right
    assert (m0["count"], m0["accuracy"], m0["tpr"], m0["fpr"]) == (4, 1.0, 1.0, 0.0)
    assert gaps["Male"] == {"accuracy": 0.5, "tpr": 0.5, "fpr": 0.5}
    # intersections: Male=0&Young=1 = samples 4,5,6; Male=1&Young=0 = samples 1,3 (both negative)
    both = groups["Male=1&Young=0"]
    assert (both["count"], both["positives"], both["accuracy"], both["tpr"], both["fpr"]) == (2, 0, 0.5, None, 0.5)
    assert both["auroc"] is None  # one class only: no AUROC (torchmetrics would say 0.0)
    assert groups["Male=0&Young=1"]["count"] == 3 and groups["Male=0&Young=1"]["accuracy"] == 1.0
    assert set(groups) == {"Male=0", "Male=1", "Young=0", "Young=1",
                           "Male=0&Young=0", "Male=0&Young=1", "Male=1&Young=0", "Male=1&Young=1"}
    assert sum(groups[k]["count"] for k in groups if "&" in k) == 8
    lo, hi = m1["accuracy_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_continuous_covariates_are_not_grouped():
    y, p = _fixed(100)
    groups, gaps = group_table(y, p, {"Age": np.linspace(0, 1, 100)}, n_boot=10)
    assert groups == {} and gaps == {}


def test_split_metrics_is_strict_json_and_consistent():
    y, p = _fixed(200)
    cov = {"Male": (np.arange(200) % 2).astype(float)}
    m = split_metrics(y, p, cov, loss=log_loss(y, p), n_boot=100)
    json.dumps(m, allow_nan=False)
    assert m["count"] == 200
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
    assert m["loss"] == pytest.approx(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)))
    for name in ("accuracy", "balanced_accuracy", "f1", "f1_macro", "auroc"):
        lo, hi = m[f"{name}_ci"]
        assert 0 < hi - lo < 0.5, name
    # accuracy's interval against the standard error computed here: t(n-1) x SE, up to bootstrap noise
    correct = ((p >= 0.5) == (y == 1)).astype(float)
    se = np.sqrt(len(y) / (len(y) - 1) * ((correct - correct.mean()) ** 2).sum()) / len(y)
    lo, hi = m["accuracy_ci"]
    from scipy import stats as sps

    assert 0.7 < (hi - lo) / 2 / (sps.t.ppf(0.975, len(y) - 1) * se) < 1.4
    assert (lo + hi) / 2 == pytest.approx(correct.mean())
    assert {"Male=0", "Male=1"} <= set(m["groups"]) and "Male" in m["gaps"]


def test_image_level_paired_bootstrap_difference_and_null():
    y, p = _fixed(300)
    worse = np.where(np.arange(300) % 3 == 0, 1 - p, p)  # flips a third of the predictions
    r = paired_cluster_bootstrap(y, p, worse, None, n_boot=500, seed=0)  # groups None: one per image
    assert r["difference"] == pytest.approx(skm.accuracy_score(y, p >= .5) - skm.accuracy_score(y, worse >= .5))
    assert r["ci"][0] > 0 and r["p_value"] < 0.01
    same = paired_cluster_bootstrap(y, p, p, None, n_boot=200)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0


def test_a_run_and_the_report_draw_the_same_resamples_whether_ids_are_numbers_or_text():
    """A run resamples CelebA identities as numbers, the study report reads them back from predictions.csv as
    text ("2880"); both must number the people alike, or the same run gets two intervals."""
    rng = np.random.default_rng(5)
    ids = rng.choice([2, 10, 33, 101, 2880, 7, 64], 60)
    y = rng.random(60) < 0.5
    p = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    as_numbers = bootstrap_ci(y, p, ["accuracy", "auroc"], groups=ids, n_boot=200, seed=1)
    as_text = bootstrap_ci(y, p, ["accuracy", "auroc"], groups=ids.astype(str), n_boot=200, seed=1)
    assert as_numbers == as_text
    names = np.array(["sub-10", "sub-2", "sub-10", "s1"])  # names keep their text order
    assert (cluster_codes(names, 4) == np.unique(names, return_inverse=True)[1]).all()
