"""Two CPU processes with strategy ddp: one writer, gathered and de-duplicated valid/test predictions that
equal a one-process evaluation of the same checkpoint (no sample dropped or repeated by the sampler's padding)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from covfuse.data import read_celeba
from covfuse.data.twins.faces import write_synth


def test_ddp_on_two_cpu_processes_writes_one_complete_run(tmp_path):
    # 200 images: valid 19 and test 20 (odd counts, so two processes need the sampler's padding).
    write_synth(tmp_path / "synth", n=200, seed=3, image_size=(44, 54), progress=False)
    root = tmp_path / "synth" / "celeba"
    # Lightning re-runs this command for rank 1, as it would under `srun` or on a multi-GPU machine.
    cmd = [sys.executable, "-m", "covfuse.cli", "fit", "--data.root", str(root), "--data.image_size", "32",
           "--data.covariates", "[Young,Male]", "--data.batch_size", "16", "--trainer.max_epochs", "1",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.summary", "false", "--runs_dir", str(tmp_path / "runs"), "--name", "ddp", "--bootstrap", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "ddp"
    meta = read_celeba(root)
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))  # the distributed sampler's padding is gone
    expected = np.array(meta.filenames)[meta.split > 0]
    assert sorted(ids) == sorted(expected)  # every valid and test image, from both processes
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["count"] + metrics["test"]["count"] == len(expected)
    log = (run / "log.txt").read_text()
    assert log.count("[ddp] training: 2 CPU device(s)") == 1  # only rank 0 writes the log
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "plots" / "loss.png").is_file()

    # The same checkpoint evaluated by one process (`covfuse test`): same predictions, same metrics.
    from covfuse.cli.main import main as covfuse

    distributed = {r["id"]: r for r in rows}
    assert covfuse(["test", str(run), "--accelerator", "cpu"]) == 0
    with open(run / "predictions.csv", newline="") as f:
        single = {r["id"]: r for r in csv.DictReader(f)}
    assert single.keys() == distributed.keys()
    for name, row in single.items():
        assert row["split"] == distributed[name]["split"] and row["label"] == distributed[name]["label"]
        assert float(row["probability"]) == pytest.approx(float(distributed[name]["probability"]), abs=2e-6)
    again = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in ("count", "accuracy", "balanced_accuracy", "auroc", "f1"):
            assert again[split][key] == pytest.approx(metrics[split][key], abs=1e-5), (split, key)
