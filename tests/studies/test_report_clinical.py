"""The report's calibration, precision-recall and threshold scores, through `covfuse report` on hand-made runs:
each against the libraries and the stats engine, lower-is-better metrics as such (verdicts, forest plots, tuning
choices), and the overlaid reliability diagram and decision curve."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm
from PIL import Image
from sklearn import metrics as skm

from covfuse.cli.main import main as covfuse
from covfuse.studies.stats import cluster_bootstrap, paired_cluster_bootstrap
from covfuse.studies.sweep import Run, Study, write_study
from covfuse.training.clinical import logit

N, PEOPLE = 400, 100
THRESHOLDS = {"calibrated": 0.5, "overconfident": 0.3704995}


def _data():
    """Outcomes drawn from a known risk; a calibrated cell predicts the risk, an overconfident one twice its logit."""
    rng = np.random.default_rng(0)
    risk = 1 / (1 + np.exp(-rng.normal(0, 1.2, N)))
    y = (rng.uniform(size=N) < risk).astype(int)
    p = {"calibrated": risk, "overconfident": 1 / (1 + np.exp(-2 * logit(risk)))}
    return np.array([f"img{i:03d}" for i in range(N)]), np.array([f"p{i % PEOPLE}" for i in range(N)]), y, p


def _run(folder: Path, ids, groups, labels, probs, threshold: float, valid: dict | None = None) -> None:
    folder.mkdir(parents=True)
    with open(folder / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "split", "label", "probability"])
        w.writerows([i, g, "test", y, f"{p:.6f}"] for i, g, y, p in zip(ids, groups, labels, probs))
    rule = "0.5" if threshold == 0.5 else "youden"
    (folder / "metrics.json").write_text(json.dumps({"task": "binary", "test": {}, "valid": valid or {},
                                                     "threshold": {"rule": rule, "value": threshold, "split": "valid"}}))


def _study(tmp_path, tune: bool = False) -> Study:
    ids, groups, y, p = _data()
    root = tmp_path / "s"
    runs, cells = [], {}
    for cell in ("calibrated", "overconfident"):
        cells[cell] = {"model.fusion": cell}
        for lr in ((0.001, 0.01) if tune else (None,)):
            leaf = "s0" if lr is None else f"lr{lr}/s0"
            # with a search, the setting with the lower valid brier is the right one: its test predictions are kept
            right = lr in (None, 0.01)
            probs = p[cell] if right else np.full(N, 0.5)
            _run(root / cell / leaf, ids, groups, y, probs, THRESHOLDS[cell], {"brier": 0.1 if right else 0.3})
            runs.append(Run(len(runs), cell, 0, str(root / cell / leaf), cells[cell], {} if lr is None else {"optim.lr": lr}))
    study = Study("s", "sweep", str(root), [], cells, [0], {"optim.lr": [0.001, 0.01]} if tune else {}, 0,
                  "calibrated", runs, [])
    write_study(study)
    return study


def _report(capsys, study, *extra) -> dict:
    capsys.readouterr()
    assert covfuse(["report", study.study_dir, "--format", "json", "--bootstrap", "200", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _csv(study, cell, leaf="s0"):
    with open(Path(study.study_dir) / cell / leaf / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows]),
            np.array([r["group"] for r in rows]))


def test_each_clinical_score_equals_the_libraries_and_the_stats_engine(tmp_path, capsys):
    study = _study(tmp_path)
    report = _report(capsys, study)
    rows = {r["setting"]: r for r in report["rows"]}
    y, base, groups = _csv(study, "calibrated")
    _, over, _ = _csv(study, "overconfident")
    also = rows["overconfident"]["also"]
    t = THRESHOLDS["overconfident"]
    z = logit(over)
    slope = sm.GLM(y, sm.add_constant(z), family=sm.families.Binomial()).fit(tol=1e-14).params[1]
    expected = {"brier": skm.brier_score_loss(y, over), "auprc": skm.average_precision_score(y, over),
                "auroc": skm.roc_auc_score(y, over), "calibration_slope": slope,
                "sensitivity": skm.recall_score(y, over >= t), "ppv": skm.precision_score(y, over >= t),
                "specificity": skm.recall_score(1 - y, over < t)}
    for name, value in expected.items():
        assert also[name]["estimate"] == pytest.approx(value, abs=1e-9), name
    assert 0.4 < slope < 0.6  # twice the logit: a slope near one half, as the data was made
    own = rows["overconfident"]["resamples"]  # a one-run cell's interval: its run's own resamples (one interval per run)
    assert own["from"] == "the run's own (as in its metrics.json)"
    for name in ("brier", "sensitivity", "calibration_intercept"):  # pooled and paired intervals: the stats engine's
        pooled = cluster_bootstrap(y, over, groups, name, n_boot=own["n_boot"], seed=own["seed"], threshold=t)
        assert also[name]["ci"] == pytest.approx(pooled["ci"], abs=1e-12), name
        paired = paired_cluster_bootstrap(y, over, base, groups, name, n_boot=200, threshold=t, threshold_b=0.5)
        assert also[name]["difference_ci"] == pytest.approx(paired["ci"], abs=1e-12), name
        assert also[name]["p_adjusted"] == pytest.approx(paired["p_value"], abs=1e-12), name  # one compared cell
    assert rows["overconfident"]["threshold"] == {"rule": "youden", "values": [t]}
    assert set(report["curves"]["reliability"]) == {"calibrated", "overconfident"}
    assert report["curves"]["net_benefit"]["calibrated"][19] == pytest.approx(
        np.mean(y & (base >= 0.2)) - np.mean((1 - y) & (base >= 0.2)) * 0.25, abs=1e-12)  # threshold 0.20
    markdown = (Path(study.study_dir) / "report.md").read_text()
    assert "## Discrimination, calibration and the decision threshold" in markdown
    assert "| calibration_slope | overconfident |" in markdown
    assert "overconfident 0.3705 (youden)" in markdown and "figures/decision_curve.png" in markdown
    assert covfuse(["report", study.study_dir, "--format", "html", "--bootstrap", "200"]) == 0
    page = (Path(study.study_dir) / "report.html").read_text()
    assert '<h2 id="also">Discrimination, calibration and the decision threshold</h2>' in page
    assert "<td>npv</td><td>overconfident</td>" in page and '<img id="decision_curve"' in page


def test_lower_is_better_metrics_read_as_such(tmp_path, capsys):
    study = _study(tmp_path)
    rows = {r["setting"]: r for r in _report(capsys, study, "--metric", "brier")["rows"]}
    over = rows["overconfident"]
    assert over["difference"] > 0 and over["verdict"] == "worse"  # a higher Brier score is worse
    forest = Image.open(Path(study.study_dir) / "figures" / "forest-brier.png")
    assert "lower is better" in forest.text["Description"]
    rows = {r["setting"]: r for r in _report(capsys, study, "--metric", "calibration_slope")["rows"]}
    assert rows["overconfident"]["difference"] < 0 and rows["overconfident"]["verdict"] == "differs"  # best at 1
    figures = Path(study.study_dir) / "figures"
    for name in ("reliability", "decision_curve"):
        text = Image.open(figures / f"{name}.png").text["Description"]
        assert f"n = {N} samples of {PEOPLE} people" in text and "calibrated" in text and "overconfident" in text


def test_a_tuned_cell_keeps_the_setting_with_the_lower_valid_brier(tmp_path, capsys):
    study = _study(tmp_path, tune=True)
    rows = {r["setting"]: r for r in _report(capsys, study, "--metric", "brier")["rows"]}
    assert rows["calibrated"]["tuned"]["chosen"] == {"optim.lr": 0.01}
    y, p, _ = _csv(study, "calibrated", "lr0.01/s0")  # the report scores the kept runs only
    assert rows["calibrated"]["estimate"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)


@pytest.mark.parametrize("bad", ["nan", "inf", ""])
def test_a_damaged_prediction_is_refused_and_the_earlier_report_kept(tmp_path, capsys, bad):
    """A predictions.csv edited by hand (NaN, Inf, an empty cell) stops the report with one line naming the
    file, line and column, exit 2, and the report written before stays as it was."""
    study = _study(tmp_path)
    _report(capsys, study)
    assert covfuse(["report", study.study_dir, "--bootstrap", "200"]) == 0
    before = {p.name: p.read_bytes() for p in Path(study.study_dir).glob("report.*")}
    path = Path(study.study_dir) / "overconfident" / "s0" / "predictions.csv"
    lines = path.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:4] + [bad])
    path.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert covfuse(["report", study.study_dir, "--bootstrap", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "predictions.csv line 4: probability" in err and "not a finite number" in err
    assert {p.name: p.read_bytes() for p in Path(study.study_dir).glob("report.*")} == before
