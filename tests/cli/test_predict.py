"""`covfuse predict` and `covfuse test` against the probabilities a finished run wrote, and the decision
threshold the run chose on its validation split (metrics.threshold youden), applied to test and in predict."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from covfuse.cli.main import main as covfuse
from covfuse.data.twins.faces import write_synth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    write_synth(base / "synth", n=200, seed=2, effect="planted", image_size=(44, 54), progress=False)
    root = base / "synth" / "celeba"
    args = ["fit", "--data.root", str(root), "--data.image_size", "32", "--data.covariates", "[Young,Male]",
            "--data.batch_size", "32", "--trainer.max_epochs", "1", "--runs_dir", str(base / "runs"),
            "--name", "p", "--bootstrap", "50", "--trainer.summary", "false", "--data.cache", "build",
            "--metrics.threshold", "youden"]
    assert covfuse(args) == 0
    return base / "runs" / "p", root


def _predictions(run_dir, split="test"):
    with open(run_dir / "predictions.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def _parse_stdout(text):
    rows = list(csv.reader(text.strip().splitlines()))
    return rows[0], rows[1:]


def _threshold(run_dir) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["threshold"]["value"]


def test_predict_gives_the_probabilities_test_wrote(run, capsys):
    run_dir, root = run
    rows = _predictions(run_dir)[:6]
    capsys.readouterr()
    for r in rows:  # one call per covariate combination, as a user would; options anywhere
        image = root / "img_align_celeba" / r["id"]
        assert covfuse(["predict", "p", "--runs_dir", str(run_dir.parent), str(image),
                        "--covariates", f"Male={r['Male']},young={r['Young']}"]) == 0
        header, out = _parse_stdout(capsys.readouterr().out)
        assert header == ["image", "Young", "Male", "P(Attractive)", "predicted_Attractive"]
        assert float(out[0][3]) == pytest.approx(float(r["probability"]), abs=2e-6)
        assert out[0][4] == ("1" if float(r["probability"]) >= _threshold(run_dir) else "0")


def test_predict_csv_batch_matches_too(run, tmp_path, capsys):
    run_dir, root = run
    rows = _predictions(run_dir, "valid")
    table = tmp_path / "batch.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Male", "image", "Young", "note"])  # any column order, extra columns ignored
        for r in rows:
            w.writerow([r["Male"], str(root / "img_align_celeba" / r["id"]), r["Young"], "x"])
    capsys.readouterr()
    assert covfuse(["predict", "p", "--runs_dir", str(run_dir.parent), "--csv", str(table), "--batch_size", "7"]) == 0
    header, out = _parse_stdout(capsys.readouterr().out)
    assert header[-1] == "out_of_range" and len(out) == len(rows)
    for r, o in zip(rows, out):
        assert o[0].endswith(r["id"]) and float(o[3]) == pytest.approx(float(r["probability"]), abs=2e-6)
        assert o[4] == ("1" if float(r["probability"]) >= _threshold(run_dir) else "0") and o[5] == ""
    # a row holding a value training never saw is predicted and marked; --strict refuses the table
    with open(table, "a", newline="") as f:
        csv.writer(f).writerow(["2", str(root / "img_align_celeba" / rows[0]["id"]), "1", "x"])
    assert covfuse(["predict", "p", "--runs_dir", str(run_dir.parent), "--csv", str(table)]) == 0
    captured = capsys.readouterr()
    _, out = _parse_stdout(captured.out)
    assert [o[5] for o in out] == [""] * len(rows) + ["Male=2 (training had 0/1)"]
    assert f"1 of {len(rows) + 1} row(s)" in captured.err and len(captured.err.strip().splitlines()) == 2
    assert "predicted_Attractive is the positive class where P(Attractive) >=" in captured.err
    assert covfuse(["predict", "p", "--runs_dir", str(run_dir.parent), "--csv", str(table), "--strict"]) == 2
    assert f"row {len(rows) + 2}: Male=2 was never seen in training" in capsys.readouterr().err


def test_covariates_change_the_prediction_of_a_hybrid_model(run, capsys):
    run_dir, root = run
    image = root / "img_align_celeba" / _predictions(run_dir)[0]["id"]
    capsys.readouterr()
    probs = []
    for young in (0, 1):
        assert covfuse(["predict", str(run_dir), str(image), "--covariates", f"Young={young},Male=0"]) == 0
        probs.append(float(_parse_stdout(capsys.readouterr().out)[1][0][3]))
    assert probs[0] != probs[1]


@pytest.mark.parametrize("args,message", [
    (["--covariates", "Male=1"], "missing Young"),
    (["--covariates", "Male=1,Yung=0"], "did you mean 'Young'"),
    (["--covariates", "Male=1,Young=nan"], "finite"),
    (["--covariates", "Male=1,Young"], "NAME=VALUE"),
])
def test_predict_bad_covariates_are_one_line_errors(run, capsys, args, message):
    run_dir, root = run
    image = root / "img_align_celeba" / _predictions(run_dir)[0]["id"]
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), str(image), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_predict_missing_image_and_missing_run(run, capsys, tmp_path):
    run_dir, _ = run
    assert covfuse(["predict", str(run_dir), str(tmp_path / "no.jpg"), "--covariates", "Male=1,Young=1"]) == 2
    assert "no such image" in capsys.readouterr().err
    assert covfuse(["predict", "nope", "x.jpg", "--runs_dir", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_test_command_rewrites_the_same_metrics(run, capsys):
    run_dir, _ = run
    before = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    assert covfuse(["test", str(run_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    after = json.loads((run_dir / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in ("accuracy", "auroc", "f1", "balanced_accuracy", "count", "groups", "threshold", "brier",
                    "calibration_slope"):
            assert after[split][key] == pytest.approx(before[split][key]) if not isinstance(before[split][key], dict) \
                else after[split][key] == before[split][key]
    assert after["threshold"] == before["threshold"]  # chosen again on valid: the same value
    assert after["checkpoint_step"] == before["checkpoint_step"] == 161 // 32
    assert after["checkpoint_epoch"] == 1
    assert covfuse(["test", str(run_dir), "--ckpt", "last"]) == 0


def test_predict_extrapolate_accepts_a_value_training_never_held(run, capsys):
    run_dir, root = run
    image = str(root / "img_align_celeba" / _predictions(run_dir)[0]["id"])
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), image, "--covariates", "Male=1,Young=2"]) == 2
    assert "Young=2 was never seen" in capsys.readouterr().err
    assert covfuse(["predict", str(run_dir), image, "--covariates", "Male=1,Young=2", "--extrapolate"]) == 0
    header, out = _parse_stdout(capsys.readouterr().out)
    assert out[0][1:3] == ["2", "1"] and 0 <= float(out[0][3]) <= 1


def test_the_threshold_chosen_on_valid_is_applied_unchanged_to_test_and_in_predict(run, capsys):
    """metrics.threshold youden: sklearn's ROC on the valid rows of predictions.csv gives the recorded threshold
    (moved below the sample's six-decimal value by half a step); test's threshold scores are sklearn's at it, and
    `covfuse predict` classifies with it."""
    run_dir, root = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recorded = metrics["threshold"]
    valid = _predictions(run_dir, "valid")
    y = np.array([int(r["label"]) for r in valid])
    p = np.array([float(r["probability"]) for r in valid])
    fpr, tpr, cuts = skm.roc_curve(y, p, drop_intermediate=False)
    best = cuts[int(np.argmax(tpr - fpr))]
    assert recorded["rule"] == "youden" and recorded["split"] == "valid"
    assert recorded["value"] == pytest.approx(best - 5e-7, abs=1e-12)
    t = recorded["value"]
    for split in ("valid", "test"):
        rows = _predictions(run_dir, split)
        y = np.array([int(r["label"]) for r in rows])
        decided = np.array([float(r["probability"]) for r in rows]) >= t
        m = metrics[split]
        assert m["threshold"] == t
        assert m["sensitivity"] == pytest.approx(skm.recall_score(y, decided), abs=1e-12)
        assert m["specificity"] == pytest.approx(skm.recall_score(1 - y, ~decided), abs=1e-12)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, decided), abs=1e-12)
        if decided.any():
            assert m["ppv"] == pytest.approx(skm.precision_score(y, decided), abs=1e-12)
        if not decided.all():
            assert m["npv"] == pytest.approx(skm.precision_score(1 - y, ~decided), abs=1e-12)
    rows = _predictions(run_dir)
    table = run_dir.parent / "all-test.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "Young", "Male"])
        w.writerows([str(root / "img_align_celeba" / r["id"]), r["Young"], r["Male"]] for r in rows)
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), "--csv", str(table)]) == 0
    captured = capsys.readouterr()
    _, out = _parse_stdout(captured.out)
    assert [o[4] for o in out] == ["1" if float(r["probability"]) >= t else "0" for r in rows]
    assert f">= {t:.6g} (metrics.threshold youden, chosen on the valid split)" in captured.err
