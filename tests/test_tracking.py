"""Trackers: TensorBoard and MLflow logs of a run and of a study, read back with the libraries' own readers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.errors import UserError
from data_fixtures import make_twin

pytest.importorskip("tensorboard", reason="covfuse[tensorboard] is not installed")
pytest.importorskip("mlflow", reason="covfuse[mlflow] is not installed")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

TINY = ["--data.covariates", "Young,Male", "--data.image_size", "16", "--data.batch_size", "16", "--data.cache", "off",
        "--bootstrap", "50", "--trainer.max_epochs", "2", "--trainer.summary", "false", "--trainer.progress", "none",
        "--trainer.accelerator", "cpu"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return make_twin(tmp_path_factory, n=96, size=(24, 28)) / "celeba"


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _text(acc, tag: str) -> str:
    from tensorboard.util import tensor_util

    value = tensor_util.make_ndarray(acc.Tensors(f"{tag}/text_summary")[0].tensor_proto)
    return value.item().decode() if hasattr(value, "item") else str(value)


def test_a_run_logs_curves_tags_final_metrics_and_figures_to_tensorboard_and_mlflow(twin, tmp_path):
    from mlflow.tracking import MlflowClient

    runs = tmp_path / "runs"
    assert covfuse(["fit", "--data.root", str(twin), *TINY, "--runs_dir", str(runs), "--name", "tiny",
                    "--trainer.logger", "[csv,tensorboard,mlflow]"]) == 0
    run = runs / "tiny"
    metrics = json.loads((run / "metrics.json").read_text())
    acc = _events(run / "tensorboard")
    val = [e.value for e in acc.Scalars("val/loss")]
    assert len(val) == 2  # one value per epoch, as in metrics.csv
    import csv
    with open(run / "metrics.csv", newline="") as f:
        csv_val = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert val == pytest.approx(csv_val, rel=1e-6)
    assert acc.Scalars("final/test/accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
    lo, hi = metrics["test"]["accuracy_ci"]
    assert acc.Scalars("final/test/accuracy_ci_lo")[0].value == pytest.approx(lo, rel=1e-6)
    assert acc.Scalars("final/test/accuracy_ci_hi")[0].value == pytest.approx(hi, rel=1e-6)
    assert _text(acc, "tags/run") == "tiny" and _text(acc, "tags/seed") == "0"
    assert "plots/loss" in acc.Tags()["images"]

    client = MlflowClient((runs / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("covfuse")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    assert found.info.status == "FINISHED"
    assert found.data.tags["run"] == "tiny" and found.data.tags["seed"] == "0" and found.data.tags["study"] == ""
    assert found.data.metrics["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
    assert found.data.metrics["final/valid/accuracy_ci_lo"] == pytest.approx(metrics["valid"]["accuracy_ci"][0], rel=1e-6)
    history = client.get_metric_history(found.info.run_id, "val/loss")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(csv_val, rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "plots")}
    assert artifacts == {"plots/loss.png"}


def test_a_two_cell_study_is_one_mlflow_experiment_with_cell_settings_and_seed_tags(twin, tmp_path):
    from mlflow.tracking import MlflowClient

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"root": str(twin), "covariates": ["Young", "Male"], "image_size": 16,
                                             "batch_size": 16, "cache": "off"},
                                    "trainer": {"max_epochs": 1, "summary": False, "progress": "none",
                                                "accelerator": "cpu", "logger": ["csv", "mlflow", "tensorboard"]},
                                    "bootstrap": 50}))
    assert covfuse(["sweep", "--config", str(base), "--name", "pair", "--runs-dir", str(tmp_path / "runs"),
                    "--grid", "model.fusion=image-only,hybrid", "--seeds", "0,1"]) == 0
    study = tmp_path / "runs" / "pair"
    client = MlflowClient((study / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("pair")
    found = client.search_runs([experiment.experiment_id])
    seen = {(r.data.tags["cell"], r.data.tags["seed"]): r for r in found}
    assert set(seen) == {(c, s) for c in ("fusion=image-only", "fusion=hybrid") for s in ("0", "1")}
    for (cell, seed), r in seen.items():
        assert r.data.tags["study"] == "pair" and r.info.run_name == f"{cell}/s{seed}"
        assert json.loads(r.data.tags["settings"]) == {"model.fusion": cell.split("=")[1]}
        metrics = json.loads((study / cell / f"s{seed}" / "metrics.json").read_text())
        assert r.data.metrics["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
        acc = _events(study / cell / f"s{seed}" / "tensorboard")
        assert _text(acc, "tags/cell") == cell and _text(acc, "tags/study") == "pair"


def test_a_missing_tracker_package_or_unknown_logger_is_one_line(monkeypatch):
    import importlib.util

    from covfuse.training.tracking import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'covfuse\[mlflow\]'"):
        check_loggers(["csv", "mlflow"])
    with pytest.raises(UserError, match="did you mean 'tensorboard'"):
        check_loggers(["tensorbord"])
