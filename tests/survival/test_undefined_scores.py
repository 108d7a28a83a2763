"""Where a survival score is undefined, and why: td-AUC and the Brier score use a censoring weight only where
it enters (the Rossi case against scikit-survival), evaluation times and tau outside the training follow-up,
the default grid, every null written with a reason, Breslow's baseline for any risk score, and one grid and
tau for all folds of a cross-validation."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.metrics import brier_score, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from covfuse.errors import UserError
from covfuse.survival import breslow
from covfuse.survival.estimators import Censoring, default_grid, usable_grid
from covfuse.survival.scores import brier
from covfuse.survival.scores import cumulative_dynamic_auc as covfuse_auc
from covfuse.training.metrics import split_metrics
from covfuse.training.survival_reference import Reference, check_times, survival_scores
from covfuse.training.survival_run import scale_labels

COVARIATES = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


@pytest.fixture(scope="module")
def rossi():
    """Rossi's recidivism data (432 people followed for 52 weeks; lifelines ships it), split 300 / 132 so that
    the test part holds arrests at week 52, where the training censoring curve reaches 0; risks from a Cox
    model fitted on the training part."""
    df = load_rossi()
    order = np.random.default_rng(0).permutation(len(df))
    train, test = df.iloc[order[:300]], df.iloc[order[300:]]
    cph = CoxPHFitter().fit(train, "week", "arrest")
    labels = lambda d: np.c_[d["week"].to_numpy(float), d["arrest"].to_numpy(float)]  # noqa: E731
    risk = lambda d: cph.predict_log_partial_hazard(d[COVARIATES]).to_numpy(float)  # noqa: E731
    return labels(train), risk(train), labels(test), risk(test)


def test_td_auc_on_the_rossi_case_equals_scikit_survival_with_that_event_recoded(rossi):
    y_train, r_train, y_test, r_test = rossi
    censoring = Censoring.fit(y_train)
    assert censoring.at([51.0, 52.0]).tolist()[1] == 0.0  # the training censoring curve reaches 0 at week 52
    late = (y_test[:, 0] == 52) & (y_test[:, 1] == 1)
    assert late.any()  # arrests at week 52 in the test part: scikit-survival refuses the whole AUC
    ref = Reference.from_training(y_train, r_train)
    grid = usable_grid(y_test, ref.grid)
    assert len(grid) >= 2 and grid.max() < 52  # every evaluation time before week 52: those people are controls
    s_train = Surv.from_arrays(y_train[:, 1] > 0, y_train[:, 0])
    with pytest.raises(ValueError, match="censoring survival function is zero"):
        cumulative_dynamic_auc(s_train, Surv.from_arrays(y_test[:, 1] > 0, y_test[:, 0]), r_test, grid)
    recoded = y_test.copy()
    recoded[late, 1] = 0  # the same people as censored at 52: a control at every t < 52 either way
    w = np.random.default_rng(1).integers(0, 3, (3, len(y_test))).astype(float)
    scores = survival_scores(y_test, r_test, np.vstack([np.ones(len(y_test)), w]), reference=ref)
    for b in range(4):
        k = np.arange(len(y_test)) if b == 0 else np.repeat(np.arange(len(y_test)), w[b - 1].astype(int))
        y = Surv.from_arrays(recoded[k, 1] > 0, recoded[k, 0])
        assert scores["td_auc"][b] == pytest.approx(cumulative_dynamic_auc(s_train, y, r_test[k], grid)[1], abs=1e-12)
        # the IBS is defined with the event as it is (its weight is never used before 52): scikit-survival agrees
        y_as_is = Surv.from_arrays(y_test[k, 1] > 0, y_test[k, 0])
        s = ref.baseline.survival(r_test[k], grid)
        assert scores["ibs"][b] == pytest.approx(integrated_brier_score(s_train, y_as_is, s, grid), abs=1e-12)
    metrics = split_metrics(y_test, r_test, n_boot=50, task="survival", reference=ref)
    assert metrics["td_auc"] == pytest.approx(float(scores["td_auc"][0])) and "td_auc_reason" not in metrics


def test_an_infinite_weight_blanks_only_the_times_where_it_enters(rossi):
    y_train, _, y_test, r_test = rossi
    censoring = Censoring.fit(y_train)
    times = np.array([20.0, 40.0, 52.0])  # 52: the arrests at week 52 are cases there, with weight 1/G = 1/0
    auc, mean = covfuse_auc(y_test, r_test, times, censoring)
    recoded = y_test.copy()
    recoded[(y_test[:, 0] == 52) & (y_test[:, 1] == 1), 1] = 0
    s_train = Surv.from_arrays(y_train[:, 1] > 0, y_train[:, 0])
    expected = cumulative_dynamic_auc(s_train, Surv.from_arrays(recoded[:, 1] > 0, recoded[:, 0]), r_test,
                                      times[:2])[0]
    np.testing.assert_allclose(auc[0, :2], expected, atol=1e-12)
    assert np.isnan(auc[0, 2]) and np.isnan(mean[0])
    b = brier(y_test, np.full((len(y_test), 3), 0.7), times, censoring)
    sk = brier_score(s_train, Surv.from_arrays(y_test[:, 1] > 0, y_test[:, 0]), np.full((len(y_test), 2), 0.7),
                     times[:2])[1]
    np.testing.assert_allclose(b[0, :2], sk, atol=1e-12)
    assert np.isnan(b[0, 2])  # scikit-survival drops the infinite weight's term; covfuse says it is undefined


def test_every_null_score_has_a_reason(rossi):
    y_train, r_train, y_test, r_test = rossi
    one_time = Reference.from_training(y_train, r_train, grid=[20.0])
    m = split_metrics(y_test, r_test, n_boot=20, task="survival", reference=one_time)
    assert m["ibs"] is None and "needs two evaluation times" in m["ibs_reason"] and m["ibs_ci"] == [None, None]
    assert m["td_auc"] is not None and "td_auc_reason" not in m
    early = Reference.from_training(y_train, r_train, grid=[3.0, 4.0])
    small = np.array([[2.0, 0], [3.0, 0], [5.0, 1], [8.0, 0], [9.0, 1]])  # no event by week 3 or 4
    m = split_metrics(small, np.arange(5.0), n_boot=20, task="survival", reference=early)
    assert m["td_auc"] is None and m["td_auc_reason"] == "no event by t = 3: the AUC there has no case"
    outside = split_metrics(small, np.arange(5.0), n_boot=20, task="survival",
                            reference=Reference.from_training(y_train, r_train, grid=[30.0, 40.0]))
    assert outside["td_auc_reason"] == ("no evaluation time inside this split's follow-up (2 <= t < 9); "
                                        "grid [30, 40]") and outside["eval_times_left_out"] == [30.0, 40.0]
    binary = split_metrics(np.ones(6), np.linspace(0.2, 0.9, 6), n_boot=20)  # one class: no AUROC
    assert binary["auroc"] is None and binary["auroc_reason"].startswith("only positive samples")
    assert binary["fpr"] is None and "fpr_reason" in binary
    single = split_metrics(y_test[:8], r_test[:8], n_boot=0, task="survival", reference=one_time)
    assert single["c_index"] is not None and single["c_index_ci_reason"] == "no bootstrap asked for (bootstrap: 0)"


def test_eval_times_and_tau_outside_the_training_follow_up_are_refused_or_named(rossi):
    y_train = rossi[0]
    with pytest.raises(UserError, match=r"data.eval_times \[60, 100\] lie outside the training split's follow-up "
                                        r"\(1 <= t < 52\)"):
        check_times(y_train, [60, 100])
    assert check_times(y_train, [10, 20, 60]) == [60.0]  # named by the caller, left out of the grid
    ref = Reference.from_training(y_train, rossi[1], grid=[10, 20, 60])
    assert ref.grid == [10.0, 20.0] and ref.sources["eval_times_left_out"] == [60.0]
    with pytest.raises(UserError, match=r"metrics.tau 1000 lies outside the training split's follow-up"):
        check_times(y_train, None, 1000.0)
    assert check_times(y_train, None, 52.0) == []
    at_zero = np.c_[np.r_[np.zeros(5), np.full(5, 9.0)], np.r_[np.ones(5), np.zeros(5)]]  # every event at time 0
    assert default_grid(at_zero) == []
    with pytest.raises(UserError, match="the default evaluation grid .* needs at least two distinct times: the "
                                        r"training split's 5 event\(s\) fall at 1 distinct time"):
        check_times(at_zero)
    check_times(at_zero, [1.0, 4.0])  # a grid given inside the follow-up is fine


@pytest.mark.parametrize("shift", [800.0, -800.0])
def test_breslow_gives_the_same_survival_for_risks_far_from_zero(rossi, shift):
    """S(t | x) depends on the risks only through their differences: shifting them all by +-800 (exp overflows
    at 709) must change nothing. The unshifted baseline equals lifelines' (tests/survival/test_estimators_and_scores.py)."""
    y_train, r_train = rossi[0], rossi[1]
    times = np.array([5.0, 20.0, 40.0, 51.0])
    expected = breslow(y_train, r_train).survival(r_train, times)
    with np.errstate(over="raise", invalid="raise"):  # no overflow, no 0 * inf on the way
        got = breslow(y_train, r_train + shift).survival(r_train + shift, times)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    df = pd.DataFrame(np.c_[y_train, r_train], columns=["T", "E", "r"])
    lifelines_s = CoxPHFitter().fit(df, "T", "E").predict_survival_function(df[["r"]], times=times).to_numpy().T
    assert np.abs(got - lifelines_s).max() < 0.05  # the same model refitted: close, not equal (its own coefficient)
    saved = Reference.from_dict(Reference.from_training(y_train, r_train + shift).to_dict())
    np.testing.assert_allclose(saved.baseline.survival(r_train + shift, times), expected, rtol=1e-10)


def test_the_folds_of_a_cross_validation_share_one_grid_and_tau():
    rng = np.random.default_rng(4)
    n = 120
    labels = np.c_[np.round(rng.exponential(10, n), 1) + 0.1, rng.random(n) < 0.7]
    indices = {"train": np.arange(0, 90), "valid": np.arange(90, 120), "test": np.arange(120, 120)}
    config = SimpleNamespace(data=SimpleNamespace(folds=4, eval_times=None), metrics=SimpleNamespace(tau=None))
    pool = scale_labels(config, SimpleNamespace(labels=labels, indices=indices))
    assert len(pool) == 120
    folds = [np.setdiff1d(np.arange(n), np.arange(k * 30, (k + 1) * 30)) for k in range(4)]
    refs = [Reference.from_training(labels[f], rng.normal(size=len(f)), scale_labels=pool) for f in folds]
    assert all(r.grid == refs[0].grid and r.tau == refs[0].tau for r in refs)
    assert refs[0].grid == [t for t in default_grid(pool) if t < labels[folds[0], 0].max()]
    assert "cross-validation" in refs[0].sources["eval_times_from"]
    own = [Reference.from_training(labels[f], rng.normal(size=len(f))) for f in folds]
    assert len({tuple(r.grid) for r in own}) > 1  # each fold on its own would have its own grid
    config.data.folds = 0
    assert scale_labels(config, SimpleNamespace(labels=labels, indices=indices)) is None
