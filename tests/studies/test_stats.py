"""Cluster-bootstrap statistics against independent loops, hand formulas and simulation (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from covfuse.errors import UserError
from covfuse.studies.stats import (
    clustered_mcnemar, cluster_bootstrap, cluster_bootstrap_mean, holm, paired_cluster_bootstrap, seed_test,
)
from covfuse.training.metrics import bootstrap_ci


def _clustered(rng, clusters=40, true=0.8, concentration=4.0):
    """Predictions whose correctness shares a per-cluster rate drawn around ``true`` (strong clustering)."""
    sizes = rng.integers(5, 36, clusters)
    rate = rng.beta(true * concentration, (1 - true) * concentration, clusters)
    groups = np.repeat(np.arange(clusters), sizes)
    y = rng.integers(0, 2, len(groups))
    return y, groups, rate


def _probs(rng, y, groups, rate):
    right = rng.random(len(y)) < rate[groups]
    return np.where(right == (y == 1), 0.8, 0.2) + rng.normal(0, 0.05, len(y))


def _members(groups):
    codes = np.unique(groups, return_inverse=True)[1]
    return [np.flatnonzero(codes == k) for k in range(codes.max() + 1)]


def _t_ci(estimate, draws, clusters):
    """The interval by hand: estimate ± t(G-1) * sd(draws) * sqrt(G/(G-1)), clipped to [0, 1]."""
    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    half = sps.t.ppf(0.975, clusters - 1) * draws.std(ddof=1) * np.sqrt(clusters / (clusters - 1))
    return [max(0.0, estimate - half), min(1.0, estimate + half)]


def _loop_draws(groups, n_boot, seed):
    """Independent reference: the same cluster draws, expanded into explicit index lists."""
    members = _members(groups)
    drawn = np.random.default_rng(seed).integers(0, len(members), size=(n_boot, len(members)))
    return [np.concatenate([members[k] for k in row]) for row in drawn]


def test_cluster_bootstrap_equals_an_explicit_loop_over_resampled_people():
    rng = np.random.default_rng(0)
    y, groups, rate = _clustered(rng, clusters=25)
    p = np.round(_probs(rng, y, groups, rate), 2)  # ties exercise the AUROC tie rule
    labels = np.array([f"person{g}" for g in groups])  # any hashable group labels
    for metric, ref in [("accuracy", lambda i: skm.accuracy_score(y[i], p[i] >= 0.5)),
                        ("auroc", lambda i: skm.roc_auc_score(y[i], p[i])),
                        ("f1", lambda i: skm.f1_score(y[i], p[i] >= 0.5))]:
        r = cluster_bootstrap(y, p, labels, metric, n_boot=300, seed=5)
        want = _t_ci(ref(slice(None)), [ref(i) for i in _loop_draws(labels, 300, 5)], 25)
        assert r["ci"] == pytest.approx(want, abs=1e-12), metric
        assert r["clusters"] == 25
    assert r["estimate"] == pytest.approx(skm.f1_score(y, p >= 0.5))


def test_one_group_per_sample_is_the_image_level_bootstrap():
    rng = np.random.default_rng(1)
    y, groups, rate = _clustered(rng, clusters=10)
    p = _probs(rng, y, groups, rate)
    r = cluster_bootstrap(y, p, np.arange(len(y)), n_boot=200, seed=3)
    assert r["ci"] == bootstrap_ci(y, p, ["accuracy"], n_boot=200, seed=3)["accuracy"]
    assert r["clusters"] == len(y)


def test_cluster_intervals_are_wider_than_image_intervals_on_clustered_data():
    rng = np.random.default_rng(2)
    y, groups, rate = _clustered(rng)
    p = _probs(rng, y, groups, rate)
    c = cluster_bootstrap(y, p, groups, n_boot=500)["ci"]
    i = cluster_bootstrap(y, p, None, n_boot=500)["ci"]
    assert (c[1] - c[0]) > 1.5 * (i[1] - i[0])


def test_paired_p_value_and_interval_match_an_independent_computation():
    rng = np.random.default_rng(3)
    y, groups, rate = _clustered(rng, clusters=30)
    pa = _probs(rng, y, groups, rate)
    pb = _probs(rng, y, groups, rate * 0.97)  # a small difference, well inside the noise
    r = paired_cluster_bootstrap(y, pa, pb, groups, n_boot=400, seed=9)
    acc = lambda p, i: skm.accuracy_score(y[i], p[i] >= 0.5)  # noqa: E731
    diffs = np.array([acc(pa, i) - acc(pb, i) for i in _loop_draws(groups, 400, 9)])
    observed = acc(pa, slice(None)) - acc(pb, slice(None))
    g = 30
    se = diffs.std(ddof=1) * np.sqrt(g / (g - 1))
    p_ref = 2 * sps.t.sf(abs(observed) / se, g - 1)
    q = sps.t.ppf(0.975, g - 1)
    assert r["difference"] == pytest.approx(observed)
    assert r["p_value"] == pytest.approx(p_ref, rel=1e-9)
    assert r["ci"] == pytest.approx([observed - q * se, observed + q * se])
    assert diffs.min() < 0 < diffs.max() and 0.05 < r["p_value"] < 0.95  # zero inside the distribution
    assert r["ci"][0] < 0 < r["ci"][1]


def test_paired_test_on_identical_and_clearly_different_models():
    rng = np.random.default_rng(4)
    y, groups, rate = _clustered(rng)
    good = _probs(rng, y, groups, np.full_like(rate, 0.95))
    bad = _probs(rng, y, groups, np.full_like(rate, 0.6))
    same = paired_cluster_bootstrap(y, good, good, groups, n_boot=200)
    assert same["difference"] == 0 and same["ci"] == [0.0, 0.0] and same["p_value"] == 1.0
    r = paired_cluster_bootstrap(y, good, bad, groups, n_boot=500)
    assert r["ci"][0] > 0 and r["p_value"] == 1 / 501  # the floor: 500 resamples cannot resolve less


def test_the_paired_p_value_is_never_zero_and_n_boot_is_checked():
    y = np.array([1, 0] * 20)
    right, wrong = np.where(y == 1, 0.9, 0.1), np.where(y == 1, 0.1, 0.9)
    groups = np.repeat(np.arange(20), 2)
    r = paired_cluster_bootstrap(y, right, wrong, groups, n_boot=99)  # the same difference (1.0) in every resample
    assert r["difference"] == 1.0 and r["p_value"] == 1 / 100
    for bad in (0, 1, 2.5, True, "100"):
        with pytest.raises(UserError, match="n_boot must be a whole number"):
            paired_cluster_bootstrap(y, right, wrong, groups, n_boot=bad)
        with pytest.raises(UserError, match="n_boot"):
            cluster_bootstrap(y, right, groups, n_boot=bad)


def test_runs_are_averaged_per_resample():
    """(R, N) probabilities: the difference of run-averaged metrics, on jointly resampled groups."""
    rng = np.random.default_rng(5)
    y, groups, rate = _clustered(rng, clusters=20)
    a = np.stack([_probs(rng, y, groups, rate) for _ in range(3)])
    b = np.stack([_probs(rng, y, groups, rate * 0.8) for _ in range(3)])
    r = paired_cluster_bootstrap(y, a, b, groups, n_boot=300, seed=1)
    acc = lambda p, i: np.mean([skm.accuracy_score(y[i], run[i] >= 0.5) for run in p])  # noqa: E731
    diffs = np.array([acc(a, i) - acc(b, i) for i in _loop_draws(groups, 300, 1)])
    assert r["difference"] == pytest.approx(acc(a, slice(None)) - acc(b, slice(None)))
    se = diffs.std(ddof=1) * np.sqrt(20 / 19)
    assert r["ci"][1] - r["ci"][0] == pytest.approx(2 * sps.t.ppf(0.975, 19) * se)
    single = cluster_bootstrap(y, a, groups, n_boot=300, seed=1)
    assert single["estimate"] == pytest.approx(acc(a, slice(None)))


def test_cluster_bootstrap_covers_the_true_accuracy_in_at_least_92_percent_of_simulations():
    rng = np.random.default_rng(10)
    covered = image_covered = 0
    sims = 500
    for s in range(sims):
        y, groups, rate = _clustered(rng, true=0.8)
        right = rng.random(len(y)) < rate[groups]
        p = np.where(right == (y == 1), 0.9, 0.1)
        lo, hi = cluster_bootstrap(y, p, groups, n_boot=400, seed=s)["ci"]
        covered += lo <= 0.8 <= hi
        lo, hi = cluster_bootstrap(y, p, None, n_boot=400, seed=s)["ci"]
        image_covered += lo <= 0.8 <= hi
    assert covered / sims >= 0.92
    assert image_covered / sims < 0.8  # the image-level interval is far too narrow here


def test_paired_test_false_positive_rate_under_a_true_null_is_at_most_6_percent():
    rng = np.random.default_rng(11)
    sims, hits = 500, 0
    for s in range(sims):
        y, groups, rate = _clustered(rng)
        a, b = _probs(rng, y, groups, rate), _probs(rng, y, groups, rate)  # same accuracy per person
        hits += paired_cluster_bootstrap(y, a, b, groups, n_boot=400, seed=s)["p_value"] < 0.05
    assert hits / sims <= 0.06


def test_cluster_bootstrap_mean_equals_a_loop():
    rng = np.random.default_rng(6)
    _, groups, _ = _clustered(rng, clusters=15)
    v = rng.random(len(groups))
    r = cluster_bootstrap_mean(v, groups, n_boot=250, seed=2)
    want = _t_ci(v.mean(), [v[i].mean() for i in _loop_draws(groups, 250, 2)], 15)
    assert r["ci"] == pytest.approx(want) and r["estimate"] == pytest.approx(v.mean()) and r["clusters"] == 15


def test_clustered_mcnemar_reduces_to_mcnemar_and_follows_durkalski_by_hand():
    y = np.ones(10, int)
    pa = np.array([.9, .9, .9, .9, .1, .1, .9, .9, .1, .1])
    pb = np.array([.1, .1, .1, .9, .9, .1, .9, .1, .9, .1])
    # a only right: 0,1,2,7 (b=4); b only right: 4,8 (c=2)
    single = clustered_mcnemar(y, pa, pb, np.arange(10))
    assert (single["a_only"], single["b_only"]) == (4, 2)
    assert single["statistic"] == pytest.approx((4 - 2) ** 2 / (4 + 2))
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])  # per group (b_k, c_k): (3,0), (0,1), (1,1)
    r = clustered_mcnemar(y, pa, pb, groups)
    x2 = (3 - 1 + 0) ** 2 / (9 + 1 + 0)
    assert r["statistic"] == pytest.approx(x2) and r["p_value"] == pytest.approx(sps.chi2.sf(x2, 1))


def test_seed_test_is_the_paired_t_test_and_nadeau_bengio_inflates_the_variance():
    d = [0.03, 0.05, 0.01, 0.04]
    r = seed_test(d)
    ref = sps.ttest_1samp(d, 0.0)
    assert r["t"] == pytest.approx(ref.statistic) and r["p_value"] == pytest.approx(ref.pvalue)
    nb = seed_test(d, n_train=800, n_test=200)
    t_nb = np.mean(d) / np.sqrt((1 / 4 + 200 / 800) * np.var(d, ddof=1))
    assert nb["t"] == pytest.approx(t_nb) and nb["p_value"] > r["p_value"] and nb["method"] == "nadeau-bengio"
    assert np.isnan(seed_test([0.1])["p_value"])


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])


def test_threshold_scores_of_all_resamples_at_once_equal_the_per_resample_paths():
    """The report's path (confusion counts summed per person, one product for every resample) gives the
    draws of the sample-weighting path it replaced and of an explicit loop of sklearn scores over
    resampled people, two runs averaged, to 1e-12."""
    from covfuse.studies.stats import _mean_score, resample_scores
    from covfuse.training.metrics import cluster_codes, resample_weights

    rng = np.random.default_rng(3)
    y, groups, rate = _clustered(rng, clusters=20)
    runs = np.stack([_probs(rng, y, groups, rate) for _ in range(2)])
    refs = {"accuracy": lambda t, q: skm.accuracy_score(t, q),
            "balanced_accuracy": lambda t, q: skm.balanced_accuracy_score(t, q),
            "f1": lambda t, q: skm.f1_score(t, q, zero_division=0.0),
            "f1_macro": lambda t, q: skm.f1_score(t, q, average="macro", labels=[0, 1], zero_division=0.0)}
    codes = cluster_codes(groups, len(y))
    for metric, ref in refs.items():
        fast = resample_scores(y, runs, groups, metric, n_boot=150, seed=4)["draws"]
        weighted = np.concatenate([_mean_score(y.astype(bool), runs, metric, 0.5, w)
                                   for w in resample_weights(codes, 150, 4)])
        loop = [np.mean([ref(y[i], (p[i] >= 0.5).astype(int)) for p in runs]) for i in _loop_draws(groups, 150, 4)]
        np.testing.assert_allclose(fast, weighted, rtol=0, atol=1e-12, err_msg=metric)
        np.testing.assert_allclose(fast, loop, rtol=0, atol=1e-12, err_msg=metric)
