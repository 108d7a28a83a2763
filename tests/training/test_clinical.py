"""Calibration, precision-recall, net benefit and the decision threshold (covfuse.training.clinical) against
scikit-learn, statsmodels and a worked decision-curve example."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from covfuse.errors import UserError
from covfuse.training import clinical
from covfuse.training.metrics import bootstrap_ci, multiclass_scores, scores


def _fixed(n=300, seed=0):
    """Labels and probabilities with ties (three decimals) and a spread over the whole [0, 1]."""
    rng = np.random.default_rng(seed)
    risk = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < risk).astype(int)
    p = np.round(np.clip(risk + rng.normal(0, 0.15, n), 0.001, 0.999), 3)
    return y, p


def _statsmodels(y, p) -> tuple[float, float]:
    """(calibration intercept, calibration slope): logit(y) ~ offset(logit p) and logit(y) ~ 1 + logit(p)."""
    z = clinical.logit(p)
    offset = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=z).fit(tol=1e-14, maxiter=200)
    slope = sm.GLM(y, sm.add_constant(z), family=sm.families.Binomial()).fit(tol=1e-14, maxiter=200)
    return float(offset.params[0]), float(slope.params[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_auprc_ece_and_calibration_equal_sklearn_and_statsmodels(seed):
    y, p = _fixed(seed=seed)
    got = {k: float(v[0]) for k, v in scores(y, p).items()}
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    counts = np.bincount(np.digitize(p, np.linspace(0, 1, 11)[1:-1], right=True), minlength=10)
    counts = counts[counts > 0]
    assert got["ece"] == pytest.approx(float(np.sum(counts / len(y) * np.abs(observed - predicted))), abs=1e-12)
    points = clinical.reliability(y, p)
    assert [q["observed"] for q in points] == pytest.approx(observed, abs=1e-12)
    assert [q["predicted"] for q in points] == pytest.approx(predicted, abs=1e-12)
    assert [q["count"] for q in points] == counts.tolist()
    intercept, slope = _statsmodels(y, p)
    assert got["calibration_intercept"] == pytest.approx(intercept, abs=1e-9)
    assert got["calibration_slope"] == pytest.approx(slope, abs=1e-9)
    tn, fp, fn, tp = skm.confusion_matrix(y, p >= 0.5).ravel()
    assert (got["sensitivity"], got["specificity"]) == pytest.approx((tp / (tp + fn), tn / (tn + fp)), abs=1e-12)
    assert (got["ppv"], got["npv"]) == pytest.approx((tp / (tp + fp), tn / (tn + fn)), abs=1e-12)


def test_every_resample_is_scored_as_its_repeated_samples():
    """A weighting is the data with sample i repeated w[i] times: each row of the vectorised scores equals the
    libraries on the repeated data (the bootstrap's resamples)."""
    y, p = _fixed(120, seed=2)
    w = np.random.default_rng(3).integers(0, 3, (4, len(y))).astype(float)
    got = scores(y, p, 0.4, weights=w)
    for b in range(len(w)):
        yy, pp = np.repeat(y, w[b].astype(int)), np.repeat(p, w[b].astype(int))
        intercept, slope = _statsmodels(yy, pp)
        assert got["calibration_intercept"][b] == pytest.approx(intercept, abs=1e-9)
        assert got["calibration_slope"][b] == pytest.approx(slope, abs=1e-9)
        assert got["auprc"][b] == pytest.approx(skm.average_precision_score(yy, pp), abs=1e-12)
        assert got["brier"][b] == pytest.approx(skm.brier_score_loss(yy, pp), abs=1e-12)
        assert got["ppv"][b] == pytest.approx(skm.precision_score(yy, pp >= 0.4), abs=1e-12)


def test_undefined_calibration_is_nan_not_a_number_made_up():
    y, p = _fixed(60, seed=4)
    one_class = scores(np.ones(60, int), p)
    assert np.isnan(one_class["calibration_slope"][0]) and np.isnan(one_class["calibration_intercept"][0])
    separated = scores(np.r_[np.zeros(30, int), np.ones(30, int)], np.r_[np.full(30, 0.2), np.full(30, 0.3)])
    assert np.isnan(separated["calibration_slope"][0])  # the MLE runs off to infinity: no slope exists
    assert separated["auprc"][0] == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nobody = scores(np.zeros(60, int), p)
    assert np.isnan(nobody["auprc"][0]) and np.isnan(nobody["sensitivity"][0])


def test_bootstrap_intervals_of_the_new_scores_cover_their_estimates():
    y, p = _fixed(200, seed=5)
    groups = np.arange(200) // 4
    names = ["brier", "auprc", "ece", "calibration_slope", "calibration_intercept", "sensitivity", "npv"]
    ci = bootstrap_ci(y, p, names, groups=groups, n_boot=200, seed=0, threshold=0.45)
    point = scores(y, p, 0.45)
    for name in names:
        lo, hi = ci[name]
        assert lo < float(point[name][0]) < hi, name


def test_multiclass_brier_auprc_and_top_class_ece_equal_sklearn():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 240)
    logits = rng.normal(0, 1, (240, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = {k: float(v[0]) for k, v in multiclass_scores(y, probs).items()}
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, probs), abs=1e-12)  # summed over the classes
    assert got["auprc"] == pytest.approx(skm.average_precision_score(y, probs, average="macro"), abs=1e-12)
    correct, confidence = (probs.argmax(1) == y).astype(int), probs.max(1)
    observed, predicted = calibration_curve(correct, confidence, n_bins=10)
    counts = np.array([q["count"] for q in clinical.reliability(correct, confidence)])
    assert got["ece"] == pytest.approx(float(np.sum(counts / len(y) * np.abs(observed - predicted))), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(1)))


def test_net_benefit_on_a_worked_example_and_treat_all_as_published():
    """Net benefit = TP/n - FP/n * t / (1 - t) (Vickers & Elkin, Med Decis Making 2006;26:565-74) on 100 patients,
    30 with the disease. The model scores 15 diseased and 3 healthy at 0.7, 9 and 13 at 0.3, 6 and 54 at 0.1:
    at t = 0.2 it treats 24 diseased and 16 healthy, 0.24 - 0.16 * 0.25 = 0.20; at t = 0.5 15 and 3,
    0.15 - 0.03 * 1 = 0.12; at t = 0.05 everyone, which is treating all: 0.30 - 0.70 * 0.05 / 0.95."""
    y = np.r_[np.ones(30, int), np.zeros(70, int)]
    p = np.r_[np.full(15, 0.7), np.full(9, 0.3), np.full(6, 0.1), np.full(3, 0.7), np.full(13, 0.3), np.full(54, 0.1)]
    assert clinical.net_benefit(y, p, [0.2, 0.5, 0.05]) == pytest.approx([0.20, 0.12, 0.30 - 0.70 * 0.05 / 0.95],
                                                                         abs=1e-12)
    # treat-all column of a published decision-curve table with prevalence 0.30 (PMC6993280, Table 4), 3 decimals
    published = {0.03: 0.278, 0.05: 0.263, 0.08: 0.239, 0.10: 0.222, 0.20: 0.125, 0.30: 0.000, 0.40: -0.167,
                 0.50: -0.400, 0.60: -0.750, 0.70: -1.333, 0.80: -2.500, 0.90: -6.000, 0.96: -16.50}
    got = clinical.treat_all(0.30, list(published))
    assert got == pytest.approx(list(published.values()), abs=5e-4)
    assert clinical.net_benefit(y, p, [0.99]) == pytest.approx([0.0])  # nobody treated: the treat-none line


@pytest.mark.parametrize("text, rule", [("0.5", ("fixed", 0.5)), (0.3, ("fixed", 0.3)), ("youden", ("youden", None)),
                                        ("Sensitivity = 0.9", ("sensitivity", 0.9)),
                                        ("specificity=1", ("specificity", 1.0))])
def test_threshold_rules_parse(text, rule):
    assert clinical.parse_threshold(text) == rule
    assert clinical.parse_threshold(clinical.threshold_text(rule)) == rule  # the recorded spelling reads back


@pytest.mark.parametrize("text", ["0", "1", "1.5", "nan", "youden=0.3", "sensitivity=0", "specificity=1.2", "ppv=0.9",
                                  True, "high"])
def test_threshold_rules_refuse_what_means_nothing(text):
    with pytest.raises(UserError, match=r"metrics.threshold must be .*; got "):
        clinical.parse_threshold(text)


def _brute_force(y, p):
    """Every candidate threshold (each distinct probability) with its sensitivity and specificity, by counting."""
    out = []
    for t in np.unique(p):
        decided = p >= t
        out.append((t, decided[y == 1].mean(), (~decided[y == 0]).mean()))
    return out


def test_chosen_thresholds_are_the_rules_answer_by_counting():
    y, p = _fixed(150, seed=7)
    candidates = _brute_force(y, p)
    youden = max(candidates, key=lambda c: (c[1] + c[2], c[0]))[0]  # ties: the highest threshold
    sens = max(t for t, se, _ in candidates if se >= 0.9)
    spec = min(t for t, _, sp in candidates if sp >= 0.9)
    for rule, expected in ((("youden", None), youden), (("sensitivity", 0.9), sens), (("specificity", 0.9), spec)):
        chosen = clinical.choose_threshold(rule, y, p)
        assert chosen["value"] == pytest.approx(expected - 5e-7, abs=1e-12), rule  # half a step of six decimals below
        decided = p >= chosen["value"]
        assert (decided == (p >= expected)).all()  # the same decisions as the probability itself
    assert clinical.choose_threshold(("fixed", 0.3), y, p) == {"rule": "0.3", "value": 0.3}
    one = clinical.choose_threshold(("youden", None), np.ones(10, int), p[:10])
    assert one["value"] == 0.5 and "one class" in one["note"]


def test_running_brier_equals_sklearn_over_batches():
    from covfuse.training.module import RunningBrier

    y, p = _fixed(90, seed=8)
    metric = RunningBrier()
    for part in np.array_split(np.arange(90), 3):
        metric.update(torch.tensor(p[part]), torch.tensor(y[part]))
    assert float(metric.compute()) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    rng = np.random.default_rng(9)
    labels, probs = rng.integers(0, 4, 50), rng.dirichlet(np.ones(4), 50)
    metric = RunningBrier()
    metric.update(torch.tensor(probs), torch.tensor(labels))
    assert float(metric.compute()) == pytest.approx(skm.brier_score_loss(labels, probs), abs=1e-12)


@pytest.mark.parametrize("spread", [0.15, 6.0])
def test_calibration_far_from_the_start_equals_statsmodels(spread, monkeypatch):
    """Predictions far too timid (slope ~6.7) or far too extreme (~0.17): the first Newton steps are long
    (they move linear predictors by more than clinical.SAFE_STEP) and go through the halving line search;
    every weighting still ends at statsmodels' fit."""
    rng = np.random.default_rng(8)
    truth = rng.normal(0, 1.5, 300)
    y = (rng.uniform(size=300) < 1 / (1 + np.exp(-truth))).astype(int)
    p = 1 / (1 + np.exp(-(spread * truth - 1.0)))
    w = np.vstack([np.ones(300), rng.integers(0, 3, (3, 300))]).astype(float)
    checked = []
    likelihood = clinical._log_likelihood
    monkeypatch.setattr(clinical, "_log_likelihood", lambda *a: checked.append(1) or likelihood(*a))
    got = scores(y, p, weights=w)
    assert checked  # the long steps were checked
    for b in range(len(w)):
        intercept, slope = _statsmodels(np.repeat(y, w[b].astype(int)), np.repeat(p, w[b].astype(int)))
        assert got["calibration_intercept"][b] == pytest.approx(intercept, abs=1e-9)
        assert got["calibration_slope"][b] == pytest.approx(slope, abs=1e-9)
