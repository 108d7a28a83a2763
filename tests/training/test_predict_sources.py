"""`covfuse predict` on a volume run, against the probabilities `covfuse test` wrote into predictions.csv."""
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.training.predict import prediction_columns

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 32-subject 16³ twin (APOE4 partly missing) and a one-epoch hybrid run on it."""
    base = tmp_path_factory.mktemp("predict3d")
    twin = base / "twin"
    assert covfuse(["data", "synth3d", str(twin), "--n", "32", "--size", "16", "--seed", "1"]) == 0
    args = ["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), "--data.image_size", "16",
            "--data.batch_size", "8", "--data.cache", "off", "--model.fusion", "hybrid", "--trainer.max_epochs", "1",
            "--trainer.summary", "false", "--bootstrap", "20", "--runs_dir", str(base / "runs"), "--name", "tiny"]
    assert covfuse(args) == 0
    manifest = {r["path"]: r for r in csv.DictReader(open(twin / "manifest.csv"))}
    tested = {r["id"]: r for r in csv.DictReader(open(base / "runs" / "tiny" / "predictions.csv"))}
    return base / "runs" / "tiny", twin, manifest, tested


def predict(capsys, *args: str) -> tuple[list[str], list[list[str]]]:
    capsys.readouterr()
    assert covfuse(["predict", *args]) == 0, capsys.readouterr().err
    rows = list(csv.reader(capsys.readouterr().out.strip().splitlines()))
    return rows[0], rows[1:]


def error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert covfuse(["predict", *args]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1, err
    return lines[0]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_a_manifest_gets_the_probabilities_test_wrote(run, capsys):
    run_dir, twin, manifest, tested = run
    test = [r for r in manifest.values() if r["split"] == "test"]
    assert any(r["APOE4"] == "" for r in test)  # the missing indicator is exercised
    # Another column order, no target or split column, an extra column: only the covariates matter.
    table = write_rows(twin / "to_predict.csv", ["APOE4", "note", "path", "sex", "age", "subject"],
                       [[r["APOE4"], "x", r["path"], r["sex"], r["age"], r["subject"]] for r in test])
    # Test subjects may lie outside the training ages; --extrapolate predicts them as `covfuse test` does.
    header, out = predict(capsys, str(run_dir), "--csv", str(table), "--extrapolate", "--batch_size", "3")
    assert header == ["path", "subject", "age", "sex", "APOE4", "P(diagnosis=AD)", "predicted_diagnosis", "out_of_range"]
    assert len(out) == len(test)
    for r, o in zip(test, out):
        assert Path(o[0]) == twin / r["path"] and o[1:5] == [r["subject"], r["age"], r["sex"], r["APOE4"]]
        assert float(o[5]) == pytest.approx(float(tested[r["path"]]["probability"]), abs=1e-5)


def test_a_table_with_rows_outside_the_training_range_is_predicted_and_those_rows_marked(run, capsys):
    """The README's `covfuse predict RUN --csv manifest.csv`: the run's own manifest holds valid/test ages
    outside the training split's range; every row is predicted, those rows marked, one line says so."""
    run_dir, twin, manifest, tested = run
    train_ages = [float(r["age"]) for r in manifest.values() if r["split"] == "train" and r["age"]]
    lo, hi = min(train_ages), max(train_ages)
    outside = {p for p, r in manifest.items() if r["age"] and not lo <= float(r["age"]) <= hi}
    assert outside  # the fixture's manifest exercises it
    capsys.readouterr()
    assert covfuse(["predict", str(run_dir), "--csv", str(twin / "manifest.csv")]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(out.splitlines()))
    assert len(rows) == len(manifest)
    marked = {Path(r["path"]).relative_to(twin).as_posix() for r in rows if r["out_of_range"]}
    assert marked == outside
    assert all(r["out_of_range"].startswith(f"age={manifest[Path(r['path']).relative_to(twin).as_posix()]['age']} (training range")
               for r in rows if r["out_of_range"])
    lines = err.strip().splitlines()  # the decision threshold's line (issue 34), then one line for the marked rows
    assert len(lines) == 2 and lines[0].startswith("covfuse predict: predicted_diagnosis is the positive class")
    assert f"{len(outside)} of {len(manifest)} row(s)" in lines[1]
    for r in rows:  # marked or not, the prediction is the one `covfuse test` wrote
        key = Path(r["path"]).relative_to(twin).as_posix()
        if key in tested:
            assert float(r["P(diagnosis=AD)"]) == pytest.approx(float(tested[key]["probability"]), abs=1e-5)
    line = error(capsys, str(run_dir), "--csv", str(twin / "manifest.csv"), "--strict")
    assert "lies outside the training range" in line and "manifest.csv, line" in line


def test_a_volume_with_apoe4_missing_and_its_covariates_as_raw_values(run, capsys):
    run_dir, twin, manifest, tested = run
    r = next(manifest[p] for p, t in tested.items() if t["APOE4_missing"] == "1")
    volume = str(twin / r["path"])
    _, left_out = predict(capsys, str(run_dir), volume, "--covariates", f"age={r['age']},SEX={r['sex']}")
    _, empty = predict(capsys, str(run_dir), volume, "--covariates", f"age={r['age']},sex={r['sex']},APOE4=NA")
    assert left_out[0][:5] == [volume, Path(volume).name[: -len(".nii.gz")], r["age"], r["sex"], ""]
    assert float(left_out[0][5]) == float(empty[0][5]) == pytest.approx(float(tested[r["path"]]["probability"]), abs=1e-5)
    # the hybrid model reads the covariates: another APOE4 (one seen in training) changes the prediction
    _, given = predict(capsys, str(run_dir), volume, "--covariates", f"age={r['age']},sex={r['sex']},APOE4=2")
    assert float(given[0][5]) != float(empty[0][5])


def test_bad_input_is_one_line_naming_the_row(run, capsys, tmp_path):
    run_dir, twin, manifest, _ = run
    header = ["subject", "path", "age", "sex", "APOE4"]
    good = [[r[h] for h in header] for r in list(manifest.values())[:3]]
    cases = [
        ([good[0], ["s-x", "volumes/nope.nii.gz", "70", "F", "1"]], "line 3: volume file", "not found"),
        ([good[0], good[1], [*good[2][:2], "old", *good[2][3:]]], "line 4 (subject", "non-numeric value 'old'"),
        ([good[0], [*good[1][:2], "", *good[1][3:]]], "line 3 (subject", "age is missing"),
    ]
    for rows, where, what in cases:
        line = error(capsys, str(run_dir), "--csv", str(write_rows(twin / "bad.csv", header, rows)))
        assert where in line and what in line and "bad.csv" in line, line
    line = error(capsys, str(run_dir), "--csv", str(write_rows(twin / "bad.csv", header[:4], [r[:4] for r in good])))
    assert "no column 'APOE4'" in line
    volume = str(twin / good[0][1])
    line = error(capsys, str(run_dir), volume, "--covariates", "age=70,sex=F,MMSE=28")
    assert "--covariates: the model has no covariate 'MMSE'" in line and "it takes age, sex, APOE4" in line
    line = error(capsys, str(run_dir), volume, "--covariates", "age=120,sex=F")
    assert "age=120 lies outside the training range" in line and "--extrapolate" in line
    assert "sex=X was never seen" in error(capsys, str(run_dir), volume, "--covariates", "age=70,sex=X")
    # APOE4 (0, 1 or 2 alleles) is a number with few values: a range, not a set (data.categorical makes it a set)
    assert "APOE4=3 lies outside the training range [0, 2]" in error(capsys, str(run_dir), volume, "--covariates", "age=70,sex=F,APOE4=3")
    assert "not a volume or a 2D image file" in error(capsys, str(run_dir), str(twin / "README.txt"), "--covariates", "age=70,sex=F")
    (run_dir / "data_state.json").rename(tmp_path / "state.json")
    try:
        assert "no data_state.json" in error(capsys, str(run_dir), volume, "--covariates", "age=70,sex=F")
    finally:
        (tmp_path / "state.json").rename(run_dir / "data_state.json")


def _module(head: str, target: str = "diagnosis"):
    return SimpleNamespace(hparams=SimpleNamespace(model={"head": head}, target=target))


def test_prediction_columns_per_head():
    p = np.asarray([0.25, 0.5])
    assert prediction_columns(_module("binary", "Attractive"), p) == (["P(Attractive)"], [["0.250000"], ["0.500000"]])
    assert prediction_columns(_module("two-class"), p, ["CN", "AD"])[0] == ["P(diagnosis=AD)"]
    probs = np.asarray([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    header, rows = prediction_columns(_module("multiclass"), probs, ["CN", "MCI", "AD"])
    assert header == ["P(diagnosis=CN)", "P(diagnosis=MCI)", "P(diagnosis=AD)", "predicted_diagnosis"]
    assert rows == [["0.200000", "0.300000", "0.500000", "AD"], ["0.600000", "0.300000", "0.100000", "CN"]]
    with pytest.raises(ValueError):
        prediction_columns(_module("multiclass"), probs, ["CN", "AD"])
    assert prediction_columns(_module("regression", "age"), np.asarray([71.25, 64.0])) == (
        ["predicted_age"], [["71.25"], ["64"]])
