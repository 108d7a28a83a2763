"""The MNI152 twin (files, Bayes accuracies, visible atrophy) and a tiny 3D fit writing a full run folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covfuse.cli.main import main as covfuse
from covfuse.data.twins.brains import base_template, bayes_accuracies, draw_subjects

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("twin") / "t"
    assert covfuse(["data", "synth3d", str(out), "--n", "16", "--size", "16", "--seed", "1"]) == 0
    return out


def test_the_twin_is_read_identically_by_nibabel_and_monai(twin):
    from monai.transforms import LoadImage

    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    assert [r["subject"] for r in rows] == [f"sub-{i:04d}" for i in range(1, 17)]
    loader = LoadImage(image_only=True)
    for row in rows[:3]:
        path = twin / row["path"]
        ours = nib.load(str(path))
        theirs = loader(str(path))
        np.testing.assert_array_equal(np.asarray(theirs), ours.get_fdata())
        np.testing.assert_allclose(np.asarray(theirs.affine), ours.affine)
        assert ours.shape == (16, 16, 16) and nib.aff2axcodes(ours.affine) == ("R", "A", "S")


def test_the_data_card_and_manifest_agree(twin, capsys):
    card = json.loads((twin / "synth.json").read_text())
    assert card["bayes_accuracy"] == bayes_accuracies(2, "planted", 0.05)
    assert "0.950" in (twin / "README.txt").read_text() and "0.725" in (twin / "README.txt").read_text()
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    assert {r["diagnosis"] for r in rows} <= {"CN", "AD"}
    assert covfuse(["data", "synth3d", str(twin), "--n", "16", "--size", "16"]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("classes,effect", [(2, "planted"), (2, "null"), (3, "planted")])
def test_bayes_accuracies_match_the_best_classifiers_on_drawn_subjects(classes, effect):
    """The closed form against an independent estimate: the best rule fitted on 200k drawn latents."""
    n = 200_000
    s = draw_subjects(n, seed=5, effect=effect, num_classes=classes, noise=0.05)
    first, second = slice(0, n // 2), slice(n // 2, n)
    bins = np.clip((s["atrophy"] / 2.0 * 400).astype(int), 0, 399)  # atrophy lies in [0, 2]

    def best_rule_accuracy(key: np.ndarray) -> float:
        """Majority label per key, learnt on one half, scored on the other."""
        table = np.zeros((key.max() + 1, classes))
        np.add.at(table, (key[first], s["label"][first]), 1)
        return float((table.argmax(1)[key[second]] == s["label"][second]).mean())

    expected = bayes_accuracies(classes, effect, 0.05)
    assert best_rule_accuracy(bins) == pytest.approx(expected["image_only"], abs=0.01)
    age_bins = np.clip(((s["age"] - 55) / 35 * 40).astype(int), 0, 39)
    both = best_rule_accuracy(bins * 40 + age_bins)  # atrophy and age, jointly
    # the binned rule loses a little where the boundary crosses a bin
    assert both == pytest.approx(expected["image_and_covariates"], abs=0.03)
    apoe = np.nan_to_num(s["apoe4"], nan=3).astype(int)
    assert best_rule_accuracy(age_bins * 4 + apoe) == pytest.approx(expected["covariates_only"], abs=0.015)


def test_atrophy_darkens_the_weighted_regions():
    from covfuse.data.twins.brains import subject_volume

    base = base_template(16)
    w = base["weight"]
    values = []
    for a in (0.0, 0.5, 1.0, 1.5):
        v = subject_volume(base, a, np.random.default_rng(0))  # same nuisance draw, more atrophy
        values.append(float((v * w).sum() / w.sum()))
    assert values == sorted(values, reverse=True) and values[-1] < 0.8 * values[0]


def test_a_tiny_3d_fit_writes_a_full_run_folder_and_test_reuses_its_statistics(twin, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["fit", "--config", str(CONFIG), "--data.root", str(twin / "manifest.csv"), "--data.image_size", "16",
            "--data.batch_size", "4", "--data.cache", "off", "--model.fusion", "daft", "--trainer.max_epochs", "1",
            "--trainer.summary", "false", "--bootstrap", "50", "--runs_dir", str(runs), "--name", "tiny"]
    assert covfuse(args) == 0, capsys.readouterr().err
    run = runs / "tiny"
    for name in ("config.yaml", "log.txt", "metrics.csv", "metrics.json", "predictions.csv", "data_state.json",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "plots/loss.png"):
        assert (run / name).is_file(), name
    state = json.loads((run / "data_state.json").read_text())
    rows = list(csv.DictReader(open(twin / "manifest.csv")))
    train_age = np.asarray([float(r["age"]) for r in rows if r["split"] == "train"])
    age = next(s for s in state["encoder"]["specs"] if s["name"] == "age")
    assert age["mean"] == pytest.approx(train_age.mean()) and age["std"] == pytest.approx(train_age.std())
    missing = ["APOE4_missing"] if any(r["APOE4"] == "" for r in rows) else []
    assert state["encoder"]["features"] == ["age", "sex=F", "sex=M", "APOE4", *missing]
    predictions = list(csv.DictReader(open(run / "predictions.csv")))
    tested = {r["path"] for r in rows if r["split"] in ("valid", "test")}
    assert {p["id"] for p in predictions} == tested
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["count"] == sum(r["split"] == "test" for r in rows)
    # `covfuse test` rebuilds the data module from data_state.json and reproduces the probabilities
    before = {p["id"]: float(p["probability"]) for p in predictions}
    assert covfuse(["test", str(run)]) == 0
    after = {p["id"]: float(p["probability"]) for p in csv.DictReader(open(run / "predictions.csv"))}
    assert after.keys() == before.keys() and all(abs(after[k] - before[k]) < 1e-5 for k in before)
