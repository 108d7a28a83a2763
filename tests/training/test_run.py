"""`covfuse fit` end to end on a tiny synthetic twin: every file of the run folder, --overwrite, --resume."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm

from covfuse.cli.main import main as covfuse
from covfuse.data import read_celeba
from covfuse.data.twins.faces import write_synth
from covfuse.studies.stats import cluster_bootstrap


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin") / "synth"
    write_synth(out, n=200, seed=0, effect="planted", image_size=(44, 54), progress=False)
    return out / "celeba"


def fit_args(root, runs, name="tiny", *extra):
    return ["fit", "--data.root", str(root), "--data.image_size", "32", "--data.covariates", "[Young,Male]",
            "--data.batch_size", "32", "--trainer.max_epochs", "1", "--runs_dir", str(runs), "--name", name,
            "--bootstrap", "50", "--trainer.summary", "false", "--trainer.progress_every", "0", *extra]


@pytest.fixture(scope="module")
def run(twin, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert covfuse(fit_args(twin, runs)) == 0
    return runs / "tiny"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_has_every_file(run):
    for name in ("config.yaml", "log.txt", "metrics.csv", "metrics.json", "predictions.csv",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "plots/loss.png", "plots/reliability.png",
                 "plots/precision_recall.png", "plots/decision_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "plots/loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob("*.tmp")) and not (run / "hparams.yaml").exists()


def test_config_yaml_is_resolved_and_reloads(run, twin):
    from covfuse.training import config

    values = yaml.safe_load((run / "config.yaml").read_text())
    assert values["data"]["covariates"] == ["Young", "Male"] and values["data"]["image_size"] == 32
    assert values["optim"]["lr"] == 1e-3 and values["trainer"]["max_epochs"] == 1  # defaults written out
    cfg = config.load(run / "config.yaml")
    assert cfg.data.root == str(twin) and cfg.name == "tiny"


def test_log_is_timestamped_and_holds_progress_and_lightning_messages(run):
    lines = (run / "log.txt").read_text().splitlines()
    stamped = [line for line in lines if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line)]
    assert len(stamped) >= 0.8 * len(lines)
    text = "\n".join(lines)
    assert "[tiny] epoch 1/1 | step" in text  # progress printed on stdout, teed
    assert "[tiny] epoch 1/1 validated" in text
    assert "Restoring states from the checkpoint" not in text  # Lightning's per-evaluation notice is dropped as noise
    assert "GPU available" not in text  # the hardware banner is quiet
    assert "run tiny done" in text
    # which back-end each hybrid conv uses and why (the suite turns tuning off: the rule)
    assert re.search(r"INFO covfuse\.layers: auto back-end for HybridConv2d .*: \w+ \(rule: tuning off\)", text)


def test_progress_shows_each_epochs_own_train_loss(run):
    text = (run / "log.txt").read_text()
    shown = [float(x) for x in re.findall(r"\[tiny\] epoch \d+/\d+ trained \| train loss ([0-9.]+)", text)]
    logged = [float(r["train/loss_epoch"]) for r in _rows(run / "metrics.csv") if r.get("train/loss_epoch")]
    assert shown and shown == pytest.approx(logged, abs=1e-4)  # the same epoch's value, not the previous one


def test_metrics_csv_has_step_and_epoch_rows(run):
    rows = _rows(run / "metrics.csv")
    assert any(r.get("train/loss_step") for r in rows)
    assert any(r.get("val/loss") for r in rows) and any(r.get("train/loss_epoch") for r in rows)


def metrics_boot(run) -> int:
    return yaml.safe_load((run / "config.yaml").read_text())["bootstrap"]


def test_predictions_and_metrics_agree_with_the_data_and_sklearn(run, twin):
    meta = read_celeba(twin)
    rows = _rows(run / "predictions.csv")
    assert list(rows[0]) == ["id", "group", "split", "label", "probability", "Young", "Male"]
    metrics = json.loads((run / "metrics.json").read_text())
    lookup = {name: i for i, name in enumerate(meta.filenames)}
    young, male, target = meta.column("Young"), meta.column("Male"), meta.column("Attractive")
    for split, code in (("valid", 1), ("test", 2)):
        part = [r for r in rows if r["split"] == split]
        assert sorted(r["id"] for r in part) == sorted(np.array(meta.filenames)[meta.split == code])
        idx = np.array([lookup[r["id"]] for r in part])
        y = np.array([int(r["label"]) for r in part])
        p = np.array([float(r["probability"]) for r in part])
        assert (y == meta.attrs[idx, target]).all()
        assert [int(r["Young"]) for r in part] == meta.attrs[idx, young].tolist()
        assert [int(r["Male"]) for r in part] == meta.attrs[idx, male].tolist()
        assert [int(r["group"]) for r in part] == meta.identity[idx].tolist()  # the person, from identity_CelebA.txt
        m = metrics[split]
        assert (m["ci_method"], m["clusters"]) == ("cluster", len(set(meta.identity[idx])))
        assert m["accuracy_ci"] == pytest.approx(cluster_bootstrap(y, p, meta.identity[idx], n_boot=metrics_boot(run),
                                                                   seed=0)["ci"])
        assert m["count"] == len(part)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, p >= 0.5))
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-5)
        g = m["groups"]["Young=1"]
        sel = meta.attrs[idx, young] == 1
        assert g["count"] == sel.sum() and g["accuracy"] == pytest.approx(skm.accuracy_score(y[sel], p[sel] >= 0.5))
        expected = {f"Young={a}" for a in meta.attrs[idx, young]} | {f"Male={a}" for a in meta.attrs[idx, male]}
        expected |= {f"Young={a}&Male={b}" for a, b in zip(meta.attrs[idx, young], meta.attrs[idx, male])}
        assert set(m["groups"]) == expected and set(m["gaps"]) == {"Young", "Male", "Young&Male"}


def _png_text(path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("Description", "")


def test_clinical_scores_equal_sklearn_and_statsmodels_on_the_runs_predictions_csv(run):
    """Brier, AUPRC, ECE (sklearn's calibration curve), calibration intercept and slope (statsmodels' logistic
    fits) of the probabilities predictions.csv holds equal the libraries to 1e-9; metrics.json holds them for the
    unrounded probabilities (the file has six decimals)."""
    import statsmodels.api as sm
    from sklearn.calibration import calibration_curve

    from covfuse.training.clinical import bin_index, logit
    from covfuse.training.metrics import scores

    rows = _rows(run / "predictions.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        part = [r for r in rows if r["split"] == split]
        y = np.array([int(r["label"]) for r in part])
        p = np.array([float(r["probability"]) for r in part])
        ours = {k: float(v[0]) for k, v in scores(y, p, metrics[split]["threshold"]).items()}
        z = logit(p)
        slope = sm.GLM(y, sm.add_constant(z), family=sm.families.Binomial()).fit(tol=1e-14, maxiter=200).params[1]
        intercept = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=z).fit(
            tol=1e-14, maxiter=200).params[0]
        observed, predicted = calibration_curve(y, p, n_bins=10)
        counts = np.bincount(bin_index(p), minlength=10)
        expected = {"brier": skm.brier_score_loss(y, p), "auprc": skm.average_precision_score(y, p),
                    "ece": float(np.sum(counts[counts > 0] / len(y) * np.abs(observed - predicted))),
                    "calibration_slope": slope, "calibration_intercept": intercept}
        for name, value in expected.items():
            assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-9), (split, name)
            assert metrics[split][name] == pytest.approx(value, rel=1e-3, abs=1e-4), (split, name)
            lo, hi = metrics[split][f"{name}_ci"]
            assert lo <= metrics[split][name] <= hi, (split, name)
        assert metrics[split]["threshold"] == metrics["threshold"]["value"] == 0.5  # the default rule: 0.5 as given


def test_the_run_draws_reliability_precision_recall_and_decision_curves_naming_n(run):
    metrics = json.loads((run / "metrics.json").read_text())
    n, people = metrics["test"]["count"], metrics["test"]["clusters"]
    for name, words in (("reliability", "ideal (perfect calibration)"), ("precision_recall", "AUPRC"),
                        ("decision_curve", "treat all")):
        path = run / "plots" / f"{name}.png"
        assert path.read_bytes()[:4] == b"\x89PNG", name
        text = _png_text(path)
        assert f"test split: n = {n} samples of {people} people" in text and words in text, (name, text)


def test_checkpoints_carry_what_rebuilds_the_model(run):
    from covfuse.training.module import load_module

    ckpt = torch.load(run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["covariates"] == ["Young", "Male"] and hp["target"] == "Attractive"
    assert hp["model"]["backbone"] == "vgg-mini" and hp["model"]["fusion"] == "hybrid"
    assert hp["image_size"] == 32 and hp["preset"] == "center-crop"
    module = load_module(run / "checkpoints/best.ckpt")
    for key, value in module.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_existing_run_is_not_overwritten_without_flag(run, twin, capsys):
    before = (run / "metrics.json").read_text()
    assert covfuse(fit_args(twin, run.parent)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert (run / "metrics.json").read_text() == before
    assert covfuse(fit_args(twin, run.parent, "tiny", "--resume", "--overwrite")) == 2


def test_overwrite_replaces_the_run(twin, tmp_path):
    assert covfuse(fit_args(twin, tmp_path, "x", "--trainer.limit_train_batches", "2")) == 0
    (tmp_path / "x" / "stale.txt").write_text("from before")
    assert covfuse(fit_args(twin, tmp_path, "x", "--trainer.limit_train_batches", "2", "--overwrite")) == 0
    assert not (tmp_path / "x" / "stale.txt").exists() and (tmp_path / "x" / "metrics.json").is_file()


def test_resume_continues_from_last_ckpt(twin, tmp_path):
    assert covfuse(fit_args(twin, tmp_path, "r")) == 0
    run = tmp_path / "r"
    steps = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert steps == 161 // 32  # 161 training images, last partial batch dropped
    first_rows = _rows(run / "metrics.csv")
    assert covfuse(fit_args(twin, tmp_path, "r", "--resume", "--trainer.max_epochs", "2")) == 0
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * steps and last["epoch"] == 1
    rows = _rows(run / "metrics.csv")
    key = lambda r: (r["epoch"], r["step"], r.get("val/loss", ""), r.get("train/loss_step", ""))  # noqa: E731
    assert [key(r) for r in rows[: len(first_rows)]] == [key(r) for r in first_rows]  # kept, then continued
    assert {r["epoch"] for r in rows if r.get("val/loss")} == {"0", "1"}
    assert "resuming from" in (run / "log.txt").read_text()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2 * steps


def test_resume_without_a_run_is_a_user_error_and_without_a_checkpoint_starts_over(run, twin, tmp_path, capsys):
    assert covfuse(fit_args(twin, tmp_path, "none", "--resume")) == 2
    assert "no run to resume" in capsys.readouterr().err and not (tmp_path / "none").exists()
    # What SIGKILL leaves before the first checkpoint: a config.yaml and nothing else.
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.yaml").write_text((run / "config.yaml").read_text())
    (tmp_path / "early" / "metrics.csv").write_text("epoch,step\n0,1\n")  # a half-written log of the killed run
    assert covfuse(["fit", "--runs_dir", str(tmp_path), "--name", "early", "--resume",
                    "--trainer.limit_train_batches", "1"]) == 0
    assert json.loads((tmp_path / "early" / "metrics.json").read_text())["global_step"] == 1
    assert (tmp_path / "early" / "metrics.csv").read_text().count("\n0,1\n") == 0  # started over, not appended
