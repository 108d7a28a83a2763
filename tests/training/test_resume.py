"""Interrupted runs finish identically: SIGINT/SIGTERM mid-epoch, then --resume, equals an uninterrupted run.

The reference is the same command run without interruption (fixed seed, CPU). Augmentation is on,
so the flips' random state is part of what must come back, and so is the data order.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import pytest
import torch
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.training.resume import Interruption

# signal.SIGTERM exists on Windows too, so test the platform: there os.kill(pid, SIGINT/SIGTERM)
# terminates the process instead of running Python's handler, and no checkpoint can be taken.
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="interrupts itself with os.kill(SIGINT/SIGTERM), "
                                "which Windows does not deliver to Python signal handlers")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    from data_fixtures import make_twin

    return make_twin(tmp_path_factory, n=60, size=(24, 28), seed=5) / "celeba"


def args(root, runs, name, *extra):
    return ["fit", "--data.root", str(root), "--data.image_size", "16", "--data.covariates", "Young,Male",
            "--data.batch_size", "8", "--data.augment", "true", "--trainer.max_epochs", "2", "--runs_dir", str(runs),
            "--name", name, "--bootstrap", "0", "--trainer.summary", "false", "--trainer.progress", "none",
            *extra]


def outcome(run):
    metrics = json.loads((run / "metrics.json").read_text())
    scores = {split: {k: metrics[split][k] for k in ("accuracy", "auroc", "loss")} for split in ("valid", "test")}
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    return scores, (run / "predictions.csv").read_text(), last["state_dict"], last["global_step"]


# cosine asks for estimated_stepping_batches in configure_optimizers, which sets the data up before
# the checkpoint loads: the loader position (and the learning rate) must come back even so
COSINE = ("--optim.schedule", "cosine")


@pytest.fixture(scope="module")
def reference(twin, tmp_path_factory):
    runs = tmp_path_factory.mktemp("ref")
    assert covfuse(args(twin, runs, "ref")) == 0
    return outcome(runs / "ref")


@pytest.fixture(scope="module")
def reference_cosine(twin, tmp_path_factory):
    runs = tmp_path_factory.mktemp("refc")
    assert covfuse(args(twin, runs, "ref", *COSINE)) == 0
    return outcome(runs / "ref")


def interrupt_at(monkeypatch, step: int, signum: int):
    """Send ``signum`` to this process when training reaches ``step`` (a real signal through the real handler)."""
    original = Interruption.on_train_batch_start

    def hook(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == step and self.received is None:
            os.kill(os.getpid(), signum)
        return original(self, trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(Interruption, "on_train_batch_start", hook)


def test_sigint_and_sigterm_mid_epoch_then_resume_equal_the_uninterrupted_run(twin, tmp_path, monkeypatch, capsys,
                                                                              reference_cosine):
    # 48 training images / 8 = 6 steps per epoch: stop in the first epoch, then in the second.
    with monkeypatch.context() as m:
        interrupt_at(m, 2, signal.SIGINT)
        assert covfuse(args(twin, tmp_path, "r", *COSINE)) == 128 + signal.SIGINT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted by SIGINT in epoch 1, after step 3" in err[0]
    assert err[0].endswith(f"continue with: covfuse fit --name r --runs_dir {tmp_path} --resume")
    assert torch.load(tmp_path / "r/checkpoints/last.ckpt", weights_only=True)["global_step"] == 3
    assert not (tmp_path / "r/metrics.json").exists()

    with monkeypatch.context() as m:
        interrupt_at(m, 8, signal.SIGTERM)
        assert covfuse(["fit", "--name", "r", "--runs_dir", str(tmp_path), "--resume"]) == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM in epoch 2, after step 9" in capsys.readouterr().err

    assert covfuse(["fit", "--name", "r", "--runs_dir", str(tmp_path), "--resume"]) == 0
    scores, predictions, state, step = outcome(tmp_path / "r")
    ref_scores, ref_predictions, ref_state, ref_step = reference_cosine
    assert step == ref_step == 12
    assert scores == ref_scores and predictions == ref_predictions
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key


def test_resume_after_a_finished_epoch_equals_the_uninterrupted_run(twin, tmp_path, reference):
    # What a SIGKILL leaves: the end-of-epoch last.ckpt. --resume raises max_epochs on the saved config.
    assert covfuse(args(twin, tmp_path, "k", "--trainer.max_epochs", "1")) == 0
    assert covfuse(["fit", "--name", "k", "--runs_dir", str(tmp_path), "--resume", "--trainer.max_epochs", "2"]) == 0
    saved = yaml.safe_load((tmp_path / "k/config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 2 and saved["data"]["augment"] is True
    scores, predictions, _, step = outcome(tmp_path / "k")
    assert (scores, predictions, step) == (reference[0], reference[1], reference[3])



def test_a_volume_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path_factory, monkeypatch, capsys):
    # The volume data module trains through the same resumable loader; MONAI's flips and affines
    # draw from torch's seeded generator, so augmentation comes back too.
    from pathlib import Path

    twin = tmp_path_factory.mktemp("mri") / "t"
    assert covfuse(["data", "synth3d", str(twin), "--n", "24", "--size", "16", "--seed", "3"]) == 0
    config = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"

    def fit(runs, name):
        return ["fit", "--config", str(config), "--data.root", str(twin / "manifest.csv"), "--data.image_size", "16",
                "--data.batch_size", "4", "--data.cache", "off", "--data.augment", "true", "--trainer.max_epochs", "2",
                "--runs_dir", str(runs), "--name", name, "--bootstrap", "0", "--trainer.summary", "false",
                "--trainer.progress", "none"]

    runs = tmp_path_factory.mktemp("vruns")
    assert covfuse(fit(runs, "ref")) == 0
    with monkeypatch.context() as m:
        interrupt_at(m, 1, signal.SIGINT)
        assert covfuse(fit(runs, "r")) == 128 + signal.SIGINT
    assert "interrupted by SIGINT in epoch 1, after step 2" in capsys.readouterr().err
    assert covfuse(["fit", "--name", "r", "--runs_dir", str(runs), "--resume"]) == 0
    (_, predictions, state, step), (_, ref_predictions, ref_state, ref_step) = outcome(runs / "r"), outcome(runs / "ref")
    assert step == ref_step and predictions == ref_predictions
    for key, value in ref_state.items():
        assert torch.equal(state[key], value), key


def test_resume_with_fewer_epochs_than_trained_is_refused_before_anything_is_written(tmp_path):
    # Lightning raises only inside trainer.fit (after config.yaml was rewritten) when the restored
    # epoch exceeds max_epochs; the same rule is checked from the checkpoint's own counters first.
    from covfuse.errors import UserError
    from covfuse.training.rundir import check_resume_epochs

    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 28, "global_step": 203, "state_dict": {"w": torch.zeros(3)},
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 28}}}}}, ckpt)
    with pytest.raises(UserError, match="has trained 28 epoch\\(s\\) already, more than trainer.max_epochs 6"):
        check_resume_epochs(ckpt, 6)
    check_resume_epochs(ckpt, 28)  # Lightning's condition is current_epoch > max_epochs
    check_resume_epochs(ckpt, -1)
