"""A run whose loss turns NaN stops: exit status 1, one line, last good checkpoint kept, no NaN predictions."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from covfuse.cli.main import main as covfuse
from covfuse.training.module import CovfuseModule

FIT = ["fit", "--data.root", "twin/celeba", "--data.image_size", "16", "--data.batch_size", "8", "--data.covariates",
       "Young,Male", "--bootstrap", "0", "--trainer.summary", "false", "--trainer.progress", "none",
       "--trainer.accelerator", "cpu", "--trainer.limit_train_batches", "2", "--trainer.max_epochs", "3"]


@pytest.fixture
def work(tmp_path_factory, tmp_path, monkeypatch):
    from data_fixtures import make_twin

    shutil.copytree(make_twin(tmp_path_factory, n=60, size=(24, 28), seed=5), tmp_path / "twin")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def nan_from(monkeypatch, epoch: int, stage: str = "train") -> None:
    """The model's loss becomes NaN from ``epoch`` (0-based) on, in ``stage`` (as exploding weights make it)."""
    real = CovfuseModule.loss

    def loss(self, logits, target):
        out = real(self, logits, target)
        diverged = self.trainer.current_epoch >= epoch and (self.training if stage == "train" else not self.training)
        return out * torch.tensor(math.nan) if diverged else out

    monkeypatch.setattr(CovfuseModule, "loss", loss)


def test_a_nan_training_loss_stops_with_status_1_and_keeps_the_last_good_checkpoint(work, monkeypatch, capsys):
    nan_from(monkeypatch, epoch=1)
    code = covfuse([*FIT, "--name", "nan"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("covfuse fit: epoch 2, step 3: the training loss became nan; stopped, the last good "
                               "checkpoint is runs/nan/checkpoints/last.ckpt (epoch 1)"), lines[0]
    assert "data.nonfinite" in lines[0] and "optim.lr" in lines[0]
    run = work / "runs/nan"
    assert not (run / "predictions.csv").exists() and not (run / "metrics.json").exists()
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    # the run can still be examined: explain and test answer (exit 0, or one line), never a traceback
    monkeypatch.undo()
    monkeypatch.chdir(work)
    for argv in (["explain", "nan", "--examples", "1", "--n-boot", "20", "--steps", "2", "--mass-images", "4"],
                 ["test", "nan"]):
        capsys.readouterr()
        code = covfuse(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err and code in (0, 2), (argv, err[-2000:])


def test_a_nan_in_the_first_epoch_leaves_no_run_folder(work, monkeypatch, capsys):
    nan_from(monkeypatch, epoch=0)
    assert covfuse([*FIT, "--name", "first"]) == 1
    err = capsys.readouterr().err
    assert "epoch 1, step 1: the training loss became nan; stopped, no checkpoint had been written yet" in err
    assert not (work / "runs/first").exists()


def test_a_nan_validation_loss_stops_before_its_checkpoint(work, monkeypatch, capsys):
    nan_from(monkeypatch, epoch=1, stage="val")
    assert covfuse([*FIT, "--name", "val"]) == 1
    err = capsys.readouterr().err
    assert "epoch 2, step 4: the validation loss became nan; stopped, the last good checkpoint" in err
    ckpt = torch.load(work / "runs/val/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0
    assert not (work / "runs/val/predictions.csv").exists()


def test_a_study_whose_run_diverges_lists_it_failed_and_reports_without_a_traceback(work, monkeypatch, capsys):
    import yaml

    from data_fixtures import TINY_STUDY

    (work / "base.yaml").write_text(yaml.safe_dump({**TINY_STUDY, "data": {**TINY_STUDY["data"], "root": "twin/celeba"}}))
    real = CovfuseModule.loss

    def loss(self, logits, target):  # only the hybrid model diverges, in its second epoch
        out = real(self, logits, target)
        hybrid = self.hparams.model.get("fusion") == "hybrid"
        return out * torch.tensor(math.nan) if hybrid and self.trainer.current_epoch >= 1 and self.training else out

    monkeypatch.setattr(CovfuseModule, "loss", loss)
    args = ["sweep", "--config", "base.yaml", "--name", "st", "--grid", "model.fusion=image-only,hybrid",
            "--trainer.max_epochs", "2"]
    code = covfuse(args)
    out, err = capsys.readouterr()
    assert code != 0 and "Traceback" not in err, err[-2000:]
    assert "fusion=hybrid/s0: FAILED (epoch 2, step" in out + err and "the training loss became nan" in out + err
    assert not (work / "runs/st/fusion=hybrid/s0/predictions.csv").exists()
    monkeypatch.undo()
    monkeypatch.chdir(work)
    for argv in (["report", "runs/st"], ["status", "st"]):
        code = covfuse(argv)
        err = capsys.readouterr().err
        assert code in (0, 2) and "Traceback" not in err, (argv, err[-2000:])


def test_covfuse_test_never_writes_nan_predictions(work, capsys):
    assert covfuse([*FIT, "--name", "ok", "--trainer.max_epochs", "1"]) == 0
    run = work / "runs/ok"
    before = (run / "predictions.csv").read_bytes()
    ckpt = torch.load(run / "checkpoints/best.ckpt", weights_only=True)
    for name, tensor in ckpt["state_dict"].items():  # weights as a diverged optimiser leaves them
        if tensor.is_floating_point():
            tensor.fill_(math.nan)
    torch.save(ckpt, run / "checkpoints/best.ckpt")
    capsys.readouterr()
    assert covfuse(["test", "ok"]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("covfuse test: the model's output is NaN/Inf for "), lines
    assert (run / "predictions.csv").read_bytes() == before
    image = next((work / "twin/celeba/img_align_celeba").iterdir())
    assert covfuse(["predict", "ok", str(image), "--covariates", "Young=1,Male=0"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("covfuse predict: the model's output is NaN/Inf for 1 of 1 file(s)"), err
    assert len(err.strip().splitlines()) == 1
    code = covfuse(["explain", "ok", "--examples", "1", "--n-boot", "20", "--steps", "2", "--mass-images", "4"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code == 1 and len(lines) == 1 and "NaN/Inf" in lines[0], lines
    assert not (run / "explain").exists()
