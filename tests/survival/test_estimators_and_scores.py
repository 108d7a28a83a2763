"""Survival probabilities and the metrics built on them, against lifelines and scikit-survival: the Breslow
baseline and S(t|x) of a covariates-only model, Efron's likelihood, the integrated Brier score, the
cumulative/dynamic AUC and Uno's C on a run's own survival.csv, float64 times, and --monitor."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lifelines import CoxPHFitter, KaplanMeierFitter
from sksurv.linear_model.coxph import CoxPHOptimizer
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from covfuse.cli.main import main as covfuse
from covfuse.errors import UserError
from covfuse.survival import breslow, km_median
from covfuse.survival.estimators import usable_grid
from covfuse.survival.loss import cox_loss
from covfuse.training.module import RunningConcordance
from covfuse.training.survival_reference import Reference, survival_scores

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "survival.yaml"
TINY = ["--data.image_size", "16", "--data.batch_size", "8", "--data.cache", "off", "--trainer.max_epochs", "2",
        "--trainer.summary", "false", "--trainer.progress", "none", "--bootstrap", "50"]


def _clinical(seed: int = 0, n: int = 150):
    """A small clinical-style table: two covariates, exponential times rounded to whole units (ties), censoring."""
    rng = np.random.default_rng(seed)
    x = np.c_[rng.normal(size=n), rng.integers(0, 2, n)].astype(np.float64)
    event_time = rng.exponential(10.0 / np.exp(0.7 * x[:, 0] - 0.5 * x[:, 1]))
    censor = rng.exponential(15.0, n)
    time = np.ceil(np.minimum(event_time, censor))
    event = (event_time <= censor).astype(int)
    return x, time, event


# -- the baseline and S(t | x) --------------------------------------------------------------
def test_breslow_baseline_and_survival_equal_lifelines_for_a_covariates_only_model():
    from covfuse.training.module import CovfuseModule

    x, time, event = _clinical()
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": time, "E": event})
    cph = CoxPHFitter().fit(df, "T", "E")  # lifelines' baseline is Breslow's estimator
    module = CovfuseModule(model={"backbone": "vgg-mini", "fusion": "covariates-only", "head": "survival"},
                           covariates=["a", "b"], image_size=8)
    linear = [p for p in module.model.parameters()]
    assert [tuple(p.shape) for p in linear] == [(1, 2), (1,)]  # one linear layer: a Cox model
    with torch.no_grad():  # the covfuse model's coefficients set equal to lifelines'
        linear[0].copy_(torch.tensor(cph.params_.values[None, :]))
        linear[1].fill_(0.37)  # an intercept the baseline must absorb
        risk = module(torch.zeros(len(x), 3, 8, 8, dtype=torch.uint8), torch.tensor(x)).double().numpy()
    base = breslow(np.c_[time, event], risk)
    # at lifelines' own knots (every distinct time): between them lifelines interpolates linearly, a
    # step function (Breslow's) does not
    times = cph.baseline_cumulative_hazard_.index.values
    expected = cph.predict_survival_function(df[["a", "b"]], times=times).to_numpy().T  # (N, T)
    np.testing.assert_allclose(base.survival(risk, times), expected, rtol=2e-6, atol=1e-7)
    # lifelines' baseline is at the covariate means (centred): H0(t) exp(mean risk without the intercept)
    lifelines_h0 = cph.baseline_cumulative_hazard_["baseline cumulative hazard"]
    shift = np.exp(0.37 + cph._norm_mean.values @ cph.params_.values)
    np.testing.assert_allclose(base.at(lifelines_h0.index.values) * shift, lifelines_h0.values, rtol=2e-6)


def test_efron_loss_equals_lifelines_likelihood_and_breslow_scikit_survivals():
    x, time, event = _clinical(seed=1)
    assert len(np.unique(time[event == 1])) < event.sum() / 2  # heavy ties: Efron and Breslow differ
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "T": time, "E": event})
    cph = CoxPHFitter().fit(df, "T", "E")  # lifelines fits Efron's likelihood
    risk = torch.tensor(x @ cph.params_.values)
    efron = -float(cox_loss(risk, torch.tensor(time), torch.tensor(event), ties="efron")) * event.sum()
    assert efron == pytest.approx(cph.log_likelihood_, rel=1e-6)
    breslow_ll = -float(cox_loss(risk, torch.tensor(time), torch.tensor(event), ties="breslow")) * event.sum()
    opt = CoxPHOptimizer(risk.numpy()[:, None], event.astype(bool), time, alpha=np.zeros(1), ties="breslow")
    assert breslow_ll == pytest.approx(-opt.nlog_likelihood(np.ones(1)) * len(time), rel=1e-6)
    assert abs(efron - breslow_ll) > 1.0


def test_efron_gradient_is_finite_and_matches_finite_differences():
    time = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 3.0], dtype=torch.float64)
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    risk = torch.tensor([0.1, -0.4, 0.3, 0.8, -1.2, 0.5], requires_grad=True)
    cox_loss(risk, time, event, ties="efron").backward()
    eps, numeric = 1e-3, []
    for i in range(6):
        up, down = risk.detach().clone(), risk.detach().clone()
        up[i] += eps
        down[i] -= eps
        numeric.append(float(cox_loss(up, time, event, ties="efron") - cox_loss(down, time, event, ties="efron")) / (2 * eps))
    np.testing.assert_allclose(risk.grad.numpy(), numeric, atol=1e-3)


# -- float64 times ---------------------------------------------------------------------------
def test_times_closer_than_float32_resolves_are_not_ties():
    # 1000.00001 censored vs 1000.00002 event: the event's risk set is itself alone, the loss exactly 0
    time = torch.tensor([1000.00001, 1000.00002], dtype=torch.float64)
    event = torch.tensor([0.0, 1.0])
    risk = torch.tensor([0.3, -0.2])
    assert float(cox_loss(risk, time, event)) == 0.0
    assert float(cox_loss(risk, time, event, ties="efron")) == 0.0
    assert float(cox_loss(risk, time.float(), event)) > 0.3  # what a float32 cast did (a tie: 0.974)
    # the running C-index keeps them apart too: no comparable pair (the event is last), so NaN, not 0.5
    c = RunningConcordance()
    c.update(torch.tensor([0.3, -0.2]), torch.stack([time, event.double()], 1))
    assert torch.isnan(c.compute())


def test_a_survival_dataset_and_the_module_keep_float64_times(tmp_path):
    from covfuse.training.config import DataConfig
    from covfuse.training.datamodule import CovfuseDataModule
    from covfuse.training.module import CovfuseModule

    assert covfuse(["data", "synth3d", str(tmp_path / "t"), "--n", "24", "--size", "16", "--seed", "2", "--survival"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t" / "manifest.csv")))
    first, second = [i for i, r in enumerate(rows) if r["split"] == "train"][:2]
    rows[first].update(time="1000.00001", event="0")
    rows[second].update(time="1000.00002", event="1")
    manifest = tmp_path / "t" / "close.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = CovfuseDataModule(DataConfig(root=str(manifest), target="time", event="event", covariates=["age"],
                                        image_size=16, cache="off"), head="survival")
    data.setup("fit")
    batch = next(iter(data.eval_dataloaders(("train-eval",))[0]))
    target = batch["target"]
    assert target.dtype == torch.float64
    at = {int(i): k for k, i in enumerate(batch["index"])}
    pair = target[[at[first], at[second]]]
    assert pair[:, 0].tolist() == [1000.00001, 1000.00002]
    module = CovfuseModule(model={"backbone": "vgg-mini", "fusion": "covariates-only", "head": "survival"},
                           covariates=["age"], image_size=16)
    assert float(module.loss(torch.tensor([0.3, -0.2]), pair)) == 0.0


# -- the metrics -----------------------------------------------------------------------------
def _split(seed: int, n: int):
    rng = np.random.default_rng(seed)
    time = np.round(rng.exponential(2.0, n), 1) + 0.1
    event = (rng.random(n) < 0.6) & (time < 6.0)
    time = np.minimum(time, 6.0)  # the study ends at 6: the training censoring curve stays > 0 before every event
    risk = np.round(rng.normal(size=n) - 0.3 * time, 1)  # tied risks
    return time, event, risk


def test_ibs_td_auc_and_uno_c_equal_scikit_survival_with_training_censoring_and_under_resampling():
    (tt, te, tr), (vt, ve, vr) = _split(0, 200), _split(1, 80)
    ref = Reference.from_training(np.c_[tt, te], tr, grid=[0.5, 1.0, 1.7, 2.5, 40.0])
    labels = np.c_[vt, ve]
    grid = usable_grid(labels, ref.grid)
    assert grid.tolist() == [0.5, 1.0, 1.7, 2.5]  # 40 lies past the split's follow-up: left out, as sksurv requires
    y_train, y = Surv.from_arrays(te, tt), Surv.from_arrays(ve, vt)
    s = ref.baseline.survival(vr, grid)
    w = np.random.default_rng(3).integers(0, 3, (3, len(vt))).astype(float)
    scores = survival_scores(labels, vr, np.vstack([np.ones(len(vt)), w]), reference=ref)
    for b in range(4):
        k = np.arange(len(vt)) if b == 0 else np.repeat(np.arange(len(vt)), w[b - 1].astype(int))
        yk = Surv.from_arrays(ve[k], vt[k])
        assert scores["ibs"][b] == pytest.approx(integrated_brier_score(y_train, yk, s[k], grid), abs=1e-12)
        assert scores["td_auc"][b] == pytest.approx(cumulative_dynamic_auc(y_train, yk, vr[k], grid)[1], abs=1e-12)
        assert scores["uno_c"][b] == pytest.approx(concordance_index_ipcw(y_train, yk, vr[k], tau=ref.tau)[0], abs=1e-12)
    # the split's own censoring would give another Uno's C: the training split's is used
    assert abs(scores["uno_c"][0] - concordance_index_ipcw(y, y, vr, tau=ref.tau)[0]) > 1e-4


def test_km_median_survival_equals_lifelines():
    for seed in range(4):
        time, event, _ = _split(seed, 60)
        km = KaplanMeierFitter().fit(time, event)
        expected = km.median_survival_time_
        assert km_median(time, event) == (None if np.isinf(expected) else pytest.approx(expected))


# -- a run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("survcurves")
    assert covfuse(["data", "synth3d", str(root / "t"), "--n", "72", "--size", "16", "--seed", "3", "--survival"]) == 0
    assert covfuse(["fit", "--config", str(CONFIG), "--data.root", str(root / "t" / "manifest.csv"), *TINY,
                    "--model.fusion", "concat", "--model.ties", "efron", "--monitor", "val/ibs",
                    "--data.eval_times", "[0.5,1,1.5,2.5]", "--runs_dir", str(root / "runs"), "--name", "r"]) == 0
    return root / "runs" / "r", root / "t" / "manifest.csv"


def test_a_runs_survival_csv_gives_scikit_survivals_ibs_td_auc_and_uno_c(run):
    run_dir, manifest = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = list(csv.DictReader(open(run_dir / "survival.csv")))
    assert list(table[0])[:4] == ["id", "split", "time", "event"]
    assert list(table[0])[4:] == ["S@0.5", "S@1", "S@1.5", "S@2.5"]
    predictions = {(r["split"], r["id"]): float(r["risk"]) for r in csv.DictReader(open(run_dir / "predictions.csv"))}
    assert {(r["split"], r["id"]) for r in table} == set(predictions)  # one row per evaluated sample
    train = [r for r in csv.DictReader(open(manifest)) if r["split"] == "train"]
    y_train = Surv.from_arrays(np.asarray([r["event"] == "1" for r in train]), np.asarray([float(r["time"]) for r in train]))
    baseline = json.loads((run_dir / "survival_baseline.json").read_text())
    h0 = lambda t: np.asarray(baseline["baseline_cumulative_hazard"])[  # noqa: E731
        np.searchsorted(baseline["baseline_times"], t, side="right") - 1] if t >= baseline["baseline_times"][0] else 0.0
    checked = 0
    for split in ("valid", "test"):
        rows = [r for r in table if r["split"] == split]
        time = np.asarray([float(r["time"]) for r in rows])
        event = np.asarray([r["event"] == "1" for r in rows])
        risk = np.asarray([predictions[(split, r["id"])] for r in rows])
        grid = np.asarray(metrics[split]["eval_times"])
        s = np.asarray([[float(r[f"S@{t:g}"]) for t in grid] for r in rows])
        np.testing.assert_allclose(s, np.exp(-np.asarray([h0(t) for t in grid])[None, :] * np.exp(risk)[:, None]),
                                   rtol=1e-6)
        y = Surv.from_arrays(event, time)
        m = metrics[split]
        assert m["uno_c"] == pytest.approx(concordance_index_ipcw(y_train, y, risk, tau=m["uno_c_tau"])[0], abs=1e-6)
        if len(grid) >= 2:
            assert m["ibs"] == pytest.approx(integrated_brier_score(y_train, y, s, grid), abs=1e-9)
            checked += 1
        auc = cumulative_dynamic_auc(y_train, y, risk, grid)[1] if len(grid) else np.nan
        assert (m["td_auc"] is None and np.isnan(auc)) or m["td_auc"] == pytest.approx(auc, abs=1e-6)
        for name in ("c_index", "uno_c", "ibs", "td_auc"):
            lo, hi = m[f"{name}_ci"]
            assert m[name] is None or lo is None or lo <= m[name] <= hi
        km = KaplanMeierFitter().fit(time, event).median_survival_time_
        assert m["km_median_survival"] == (None if np.isinf(km) else pytest.approx(km))
        assert "median_time" not in m
    assert checked >= 1
    assert metrics["valid"]["uno_c_tau"] == metrics["test"]["uno_c_tau"] == metrics["survival"]["tau"]
    config = (run_dir / "config.yaml").read_text()
    assert "monitor: val/ibs" in config and "ties: efron" in config
    header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/ibs" in header
    for plot in ("km_risk_groups.png", "calibration.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 1000


def test_predict_times_gives_the_survival_csv_probabilities(run, capsys):
    run_dir, manifest = run
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), "--csv", str(manifest), "--extrapolate", "--times", "1,2.5"]) == 0
    out = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert list(out[0])[-3:-1] == ["S@1", "S@2.5"] or list(out[0])[-2:] == ["S@1", "S@2.5"]
    by_id = {Path(r["path"]).relative_to(manifest.parent).as_posix(): r for r in out}
    for r in csv.DictReader(open(run_dir / "survival.csv")):
        got = by_id[r["id"]]
        assert float(got["S@1"]) == pytest.approx(float(r["S@1"]), rel=1e-5)
        assert float(got["S@2.5"]) == pytest.approx(float(r["S@2.5"]), rel=1e-5)


def test_predict_times_is_refused_for_a_run_without_a_survival_head_and_for_bad_times(run, capsys):
    run_dir, manifest = run
    code = covfuse(["predict", str(run_dir), "--csv", str(manifest), "--times", "1,soon"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--times: 'soon' is not a number" in err


# -- monitor ---------------------------------------------------------------------------------
@pytest.mark.parametrize("monitor", ["val/loss", "val/c_index", "val/ibs"])
def test_an_explicit_survival_monitor_is_kept(monitor):
    from covfuse.training import config as cfgmod

    config, _ = cfgmod.parse(["--model.head", "survival", "--data.event", "event", "--data.target", "time",
                              "--monitor", monitor])
    assert cfgmod.check(config).monitor == monitor


def test_monitors_the_head_does_not_log_are_refused():
    from covfuse.training import config as cfgmod

    survival, _ = cfgmod.parse(["--model.head", "survival", "--data.event", "event", "--monitor", "val/acc"])
    with pytest.raises(UserError, match="monitor val/acc does not exist for head survival; use val/c_index, "
                                        "val/loss, val/ibs"):
        cfgmod.check(survival)
    binary, _ = cfgmod.parse(["--monitor", "val/ibs"])
    with pytest.raises(UserError, match="monitor val/ibs does not exist for head binary"):
        cfgmod.check(binary)
    default, _ = cfgmod.parse(["--model.head", "survival", "--data.event", "event"])
    assert cfgmod.check(default).monitor == "val/c_index"


@pytest.mark.parametrize("given", ["1,2.5,4", "[1,2.5,4]"])
def test_eval_times_read_as_predict_times_reads_them(given):
    """--data.eval_times 1,2.5,4 (the form `covfuse predict --times` takes) means the same grid as [1,2.5,4]."""
    from covfuse.training import config as cfgmod

    config, _ = cfgmod.parse(["--model.head", "survival", "--data.event", "event", "--data.target", "time",
                              "--data.eval_times", given])
    assert cfgmod.check(config).data.eval_times == [1.0, 2.5, 4.0]
    for bad, message in (("1,soon", "data.eval_times: 'soon' is not a number"), ("1,inf", "--data.eval_times: inf must be a finite time")):
        config, _ = cfgmod.parse(["--model.head", "survival", "--data.event", "event", "--data.eval_times", bad])
        with pytest.raises(UserError, match=message):
            cfgmod.check(config)


def test_predict_times_after_the_last_training_event_are_flagged(run, capsys):
    """Breslow's H0 stops at the training split's last event: a later --times is the value carried from there
    said on stderr; the in-range times get no note."""
    import json

    run_dir, manifest = run
    last = json.loads((run_dir / "survival_baseline.json").read_text())["baseline_times"][-1]
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), "--csv", str(manifest), "--extrapolate", "--times", f"{last},{last + 50}"]) == 0
    captured = capsys.readouterr()
    out = list(csv.DictReader(captured.out.splitlines()))
    at, after = f"S@{np.format_float_positional(last, trim='-')}", f"S@{np.format_float_positional(last + 50, trim='-')}"
    assert all(r[at] == r[after] for r in out)  # flat after the last event
    assert f"--times {last + 50:g} lie(s) after the training split's last event ({last:g})" in captured.err
    assert covfuse(["predict", str(run_dir), "--csv", str(manifest), "--extrapolate", "--times", f"{last / 2}"]) == 0
    assert "after the training split's last event" not in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_casts_images_but_keeps_survival_times_float64(precision, tmp_path):
    """Lightning casts every floating-point tensor of a batch to the half type under *-true precision
    (bf16: 1000.00002 and 1000.00001 both become 1000); the trainers covfuse builds keep float64 tensors."""
    from covfuse.training import config as cfgmod
    from covfuse.training.trainer import build_trainer, one_device_trainer, resolve_hardware

    batch = {"image": torch.rand(2, 3, 4, 4), "covariates": torch.rand(2, 1),
             "target": torch.tensor([[1000.00001, 0.0], [1000.00002, 1.0]], dtype=torch.float64),
             "index": torch.tensor([0, 1])}
    config, _ = cfgmod.parse(["--trainer.precision", precision, "--trainer.accelerator", "cpu"])
    config = cfgmod.check(config)
    for trainer in (one_device_trainer("cpu", precision),
                    build_trainer(config, tmp_path, resolve_hardware(config.trainer))):
        assert trainer.precision == precision
        out = trainer.precision_plugin.convert_input(batch)  # what Lightning's loops call on every batch
        assert out["image"].dtype == out["covariates"].dtype == (torch.bfloat16 if precision == "bf16-true"
                                                                  else torch.float16)
        assert out["target"].dtype == torch.float64 and torch.equal(out["target"], batch["target"])
        assert out["index"].dtype == torch.int64
        assert float(cox_loss(torch.tensor([0.3, -0.2]), out["target"][:, 0], out["target"][:, 1])) == 0.0
    # Lightning's own plugin would have tied them
    from lightning.pytorch.plugins.precision import HalfPrecision

    tied = HalfPrecision(precision).convert_input(batch)["target"]
    assert tied[0, 0] == tied[1, 0]


def test_metrics_json_gives_each_split_its_cox_loss_so_a_search_can_monitor_val_loss(run):
    """A survival search monitored by val/loss ranks trials by metrics.json's valid ``loss``: the Cox partial
    likelihood of the whole split with the run's ties (efron here), per event, as scikit-survival computes it."""
    import json

    from covfuse.studies.search import OBJECTIVE

    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    for split in ("valid", "test"):
        part = [r for r in rows if r["split"] == split]
        time = np.asarray([float(r["time"]) for r in part])
        event = np.asarray([r["event"] == "1" for r in part])
        risk = np.asarray([float(r["risk"]) for r in part])
        opt = CoxPHOptimizer(risk[:, None], event, time, alpha=np.zeros(1), ties="efron")
        expected = opt.nlog_likelihood(np.ones(1)) * len(time) / event.sum()
        assert metrics[split]["loss"] == pytest.approx(expected, rel=1e-5)
    value = metrics["valid"][OBJECTIVE["val/loss"][0]]
    assert isinstance(value, float) and np.isfinite(value)
