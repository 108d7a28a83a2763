"""Multi-class and regression heads on volumes: their scores against sklearn, tiny 3D fits that write
full run folders, and a report that knows lower MAE is better."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from covfuse.cli.main import main as covfuse
from covfuse.training.metrics import multiclass_scores, regression_scores, split_metrics

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"
TINY = ["--data.image_size", "16", "--data.batch_size", "4", "--data.cache", "off", "--trainer.max_epochs", "1",
        "--trainer.summary", "false", "--bootstrap", "50"]


def test_multiclass_scores_match_sklearn_and_weights_mean_repeats():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    p[y == 3] = 0  # class 3 is never predicted
    got = {k: float(v[0]) for k, v in multiclass_scores(y, p, num_classes=4).items()}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    w = rng.integers(0, 3, (5, 60)).astype(float)  # integer weights = samples repeated that often
    weighted = multiclass_scores(y, p, w, num_classes=4)
    for b in range(5):
        yy, pp = np.repeat(y, w[b].astype(int)), np.repeat(p, w[b].astype(int))
        assert weighted["balanced_accuracy"][b] == pytest.approx(skm.balanced_accuracy_score(yy, pp))
        assert weighted["f1_macro"][b] == pytest.approx(skm.f1_score(yy, pp, average="macro", zero_division=0))


def test_regression_scores_match_sklearn_with_and_without_weights():
    rng = np.random.default_rng(1)
    y = rng.normal(70, 8, 50)
    yhat = y + rng.normal(0, 4, 50)
    got = {k: float(v[0]) for k, v in regression_scores(y, yhat).items()}
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, yhat))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, yhat)))
    assert got["r2"] == pytest.approx(skm.r2_score(y, yhat))
    w = rng.integers(0, 4, (3, 50)).astype(float)
    weighted = regression_scores(y, yhat, w)
    for b in range(3):
        assert weighted["mae"][b] == pytest.approx(skm.mean_absolute_error(y, yhat, sample_weight=w[b]))
        assert weighted["r2"][b] == pytest.approx(skm.r2_score(y, yhat, sample_weight=w[b]))


def test_split_metrics_resample_subjects_for_every_task():
    rng = np.random.default_rng(2)
    subjects = np.repeat(np.arange(20), 3)  # three scans per subject
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    m = split_metrics(y, probs, {"sex": rng.integers(0, 2, 60)}, clusters=subjects, n_boot=200, task="multiclass")
    assert m["clusters"] == 20 and m["ci_method"] == "cluster"
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, probs.argmax(1)))
    lo, hi = m["balanced_accuracy_ci"]
    assert lo < m["balanced_accuracy"] < hi and set(m["groups"]) == {"sex=0", "sex=1"}
    r = split_metrics(y + 0.5, y + rng.normal(0, 1, 60), clusters=subjects, n_boot=200, task="regression")
    lo, hi = r["mae_ci"]
    assert 0 <= lo < r["mae"] < hi and "auroc" not in r


@pytest.fixture(scope="module")
def twin3(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twin3") / "t"
    assert covfuse(["data", "synth3d", str(out), "--n", "24", "--size", "16", "--seed", "2", "--classes", "3"]) == 0
    return out


def _fit(twin: Path, runs: Path, name: str, *extra: str) -> Path:
    assert covfuse(["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), *TINY,
                    "--runs_dir", str(runs), "--name", name, *extra]) == 0
    return runs / name


def _predict(capsys, run: Path, manifest: Path) -> dict[str, dict[str, str]]:
    """`covfuse predict RUN --csv MANIFEST --extrapolate`'s rows by the manifest's relative path."""
    capsys.readouterr()
    assert covfuse(["predict", str(run), "--csv", str(manifest), "--extrapolate"]) == 0
    rows = csv.DictReader(capsys.readouterr().out.splitlines())
    return {Path(r["path"]).relative_to(manifest.parent).as_posix(): r for r in rows}


def test_a_multiclass_fit_writes_class_probabilities_and_balanced_accuracy(twin3, tmp_path, capsys):
    run = _fit(twin3, tmp_path / "runs", "mc", "--model.head", "multiclass", "--data.classes", "[CN,MCI,AD]",
               "--model.fusion", "hybrid")
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert {"prediction", "probability_CN", "probability_MCI", "probability_AD"} <= set(rows[0])
    probs = np.asarray([[float(r[f"probability_{c}"]) for c in ("CN", "MCI", "AD")] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [int(r["prediction"]) for r in rows] == probs.argmax(1).tolist()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "multiclass" and metrics["classes"] == ["CN", "MCI", "AD"]
    test = [r for r in rows if r["split"] == "test"]
    y, p = [int(r["label"]) for r in test], [int(r["prediction"]) for r in test]
    assert metrics["test"]["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert metrics["test"]["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    assert metrics["test"]["clusters"] == len({r["group"] for r in test})
    predicted = _predict(capsys, run, twin3 / "manifest.csv")  # `covfuse predict` gives the same per class
    for r in rows:
        out = predicted[r["id"]]
        assert out["predicted_diagnosis"] == ["CN", "MCI", "AD"][int(r["prediction"])]
        assert all(abs(float(out[f"P(diagnosis={c})"]) - float(r[f"probability_{c}"])) < 1e-5 for c in ("CN", "MCI", "AD"))
    before = {r["id"]: r["probability_AD"] for r in rows}
    assert covfuse(["test", str(run)]) == 0
    after = {r["id"]: r["probability_AD"] for r in csv.DictReader(open(run / "predictions.csv"))}
    assert all(abs(float(after[k]) - float(before[k])) < 1e-5 for k in before)


def test_regression_on_age_reports_mae_and_r2_in_years_and_the_report_prefers_lower_mae(twin3, tmp_path, capsys):
    study = tmp_path / "runs"
    assert covfuse(["sweep", "--config", str(CONFIG), "--data.root", str(twin3 / "manifest.csv"), *TINY,
                    "--model.head", "regression", "--data.target", "age", "--data.covariates", "[sex,APOE4]",
                    "--monitor", "val/mae", "--grid", "model.fusion=image-only,concat", "--seeds", "0",
                    "--runs_dir", str(study), "--name", "age"]) == 0
    capsys.readouterr()
    run = study / "age" / "model.fusion=concat" / "s0"
    if not run.is_dir():  # cell folders are named from their settings
        run = next(p.parent for p in (study / "age").glob("*concat*/s0/metrics.json"))
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == "test"]
    y, yhat = np.asarray([float(r["label"]) for r in rows]), np.asarray([float(r["prediction"]) for r in rows])
    assert metrics["task"] == "regression" and 55 <= y.min() and y.max() <= 90
    assert metrics["test"]["mae"] == pytest.approx(skm.mean_absolute_error(y, yhat), abs=1e-4)
    assert metrics["test"]["r2"] == pytest.approx(skm.r2_score(y, yhat), abs=1e-4)
    assert 40 < yhat.mean() < 105  # predictions come back in years, not standardised units
    predicted = _predict(capsys, run, twin3 / "manifest.csv")  # `covfuse predict` gives the same ages
    assert all(abs(float(predicted[r["id"]]["predicted_age"]) - float(r["prediction"])) < 1e-3 for r in rows)
    # make concat perfect on test: the report must call lower MAE better
    table = list(csv.DictReader(open(run / "predictions.csv")))
    for r in table:
        if r["split"] == "test":
            r["prediction"] = r["label"]
    with open(run / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    assert covfuse(["report", str(study / "age"), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "mae" and report["task"] == "regression"
    row = next(r for r in report["rows"] if "concat" in r["setting"])
    assert row["estimate"] == 0.0 and row["difference"] < 0 and row["verdict"] == "better"


def test_heads_that_do_not_fit_the_target_exit_2(twin3, tmp_path, capsys):
    base = ["fit", "--config", str(CONFIG), "--data.root", str(twin3 / "manifest.csv"), *TINY,
            "--runs_dir", str(tmp_path), "--name", "x"]
    assert covfuse([*base, "--model.head", "binary", "--data.classes", "null"]) == 2
    assert "use model.head multiclass" in capsys.readouterr().err
    assert covfuse([*base, "--model.head", "regression", "--data.target", "age", "--data.covariates", "[sex]",
                    "--monitor", "val/acc"]) == 2
    assert "val/mae" in capsys.readouterr().err
    assert covfuse([*base, "--model.head", "regression"]) == 2  # the diagnosis is not a number
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the regression target 'diagnosis' must be a number, got 'CN'" in err
    assert not (tmp_path / "x").exists()
