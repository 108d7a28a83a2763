"""Trackers: TensorBoard and MLflow logs of a run and of a study, read back with the libraries' own readers."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.errors import UserError
from data_fixtures import make_twin

pytest.importorskip("tensorboard", reason="covfuse[tensorboard] is not installed")
pytest.importorskip("mlflow", reason="covfuse[mlflow] is not installed")

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


def _hparams(folder: Path) -> tuple[dict, set]:
    """A run's HParams session (setting -> value) and the experiment's metric names, as TensorBoard's plugin reads
    them."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = _events(folder)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    return values, {m.name.tag for m in experiment.metric_infos}


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
    with open(run / "metrics.csv", newline="") as f:
        csv_val = [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert val == pytest.approx(csv_val, rel=1e-6)
    assert acc.Scalars("final/test/accuracy")[0].value == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
    lo, hi = metrics["test"]["accuracy_ci"]
    assert acc.Scalars("final/test/accuracy_ci_lo")[0].value == pytest.approx(lo, rel=1e-6)
    assert acc.Scalars("final/test/accuracy_ci_hi")[0].value == pytest.approx(hi, rel=1e-6)
    assert _text(acc, "tags/run") == "tiny" and _text(acc, "tags/seed") == "0"
    assert "plots/loss" in acc.Tags()["images"]
    # epoch once per epoch (Lightning adds it to every metrics dict it logs); the learning rate at each logged step
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert [e.step for e in acc.Scalars("train/loss_step")] == steps
    assert [e.step for e in acc.Scalars("train/lr")] == steps
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([1e-3] * len(steps))
    assert [e.value for e in acc.Scalars("epoch")] == [0.0, 1.0, 2.0]  # two epochs, then test's
    assert "tags/fold/text_summary" not in acc.Tags()["tensors"]  # no folds: no fold tag, in either tracker
    # TensorBoard's HParams: the run's settings and the final metrics' names, read with the plugin's own protos
    settings, metric_names = _hparams(run / "tensorboard")
    assert settings["data.batch_size"] == 16 and settings["trainer.max_epochs"] == 2 and settings["seed"] == 0
    assert settings["data.root"] == str(twin) and settings["optim.lr"] == pytest.approx(1e-3)
    assert {"final/test/accuracy", "final/valid/loss"} <= metric_names
    assert acc.Scalars("final/valid/loss")[0].value == pytest.approx(metrics["valid"]["loss"], rel=1e-6)

    client = MlflowClient(f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("covfuse")
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == json.loads((run / "tracking.json").read_text())["mlflow_run_id"]
    assert found.info.status == "FINISHED"
    assert found.data.tags["run"] == "tiny" and found.data.tags["seed"] == "0"
    assert "study" not in found.data.tags and "fold" not in found.data.tags and "mlflow.parentRunId" not in found.data.tags
    assert found.data.params["data.batch_size"] == "16" and found.data.params["trainer.max_epochs"] == "2"
    assert found.data.params["data.root"] == str(twin) and found.data.params["seed"] == "0"
    lr = client.get_metric_history(found.info.run_id, "train/lr")
    assert sorted(h.step for h in lr) == steps and len(client.get_metric_history(found.info.run_id, "epoch")) == 3
    assert found.data.metrics["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
    assert found.data.metrics["final/valid/accuracy_ci_lo"] == pytest.approx(metrics["valid"]["accuracy_ci"][0], rel=1e-6)
    history = client.get_metric_history(found.info.run_id, "val/loss")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(csv_val, rel=1e-6)
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id, "plots")}
    assert artifacts == {"plots/loss.png", "plots/reliability.png", "plots/precision_recall.png", "plots/decision_curve.png"}


READ_STORE = """
import json, sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
print(json.dumps([{"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": r.data.tags,
                   "params": r.data.params, "metrics": r.data.metrics} for r in runs]))
"""


def test_a_searched_study_nests_study_cell_trial_and_seed_runs_in_the_default_sqlite_store(twin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a store or artifacts it has no place for into the working directory
    pytest.importorskip("optuna", reason="covfuse[search] is not installed")
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"root": str(twin), "covariates": ["Young", "Male"], "image_size": 16,
                                             "batch_size": 16, "cache": "off"},
                                    "trainer": {"max_epochs": 1, "summary": False, "progress": "none",
                                                "accelerator": "cpu", "logger": ["csv", "mlflow", "tensorboard"]},
                                    "bootstrap": 50}))
    assert covfuse(["sweep", "--config", str(base), "--name", "pair", "--runs-dir", str(tmp_path / "runs"),
                    "--grid", "model.fusion=image-only,hybrid", "--search", "optuna", "--trials", "1",
                    "--tune", "optim.lr=log:1e-4..1e-2"]) == 0
    study = tmp_path / "runs" / "pair"
    assert covfuse(["report", str(study), "--bootstrap", "100"]) == 0
    # MLflow's own reader, in a process without any MLflow variable: the default store is the study's mlflow.db
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", READ_STORE, f"sqlite:///{study / 'mlflow.db'}"], env=env,
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    by_id = {r["id"]: r for r in runs}
    [top] = [r for r in runs if "mlflow.parentRunId" not in r["tags"]]
    assert (top["name"], top["tags"]["kind"], top["status"]) == ("pair", "study", "FINISHED")
    cells = {r["tags"]["cell"]: r for r in runs if r["tags"].get("kind") == "cell"}
    assert set(cells) == {"fusion=image-only", "fusion=hybrid"}
    assert all(c["tags"]["mlflow.parentRunId"] == top["id"] and c["status"] == "FINISHED" for c in cells.values())
    leaves = [r for r in runs if r["tags"].get("kind") in ("trial", "run")]
    assert len(leaves) == len(runs) - 3 == 4  # one trial and one seed run per cell
    search = json.loads((study / "search.json").read_text())
    for leaf in leaves:
        cell = leaf["tags"]["cell"]
        assert by_id[leaf["tags"]["mlflow.parentRunId"]] is cells[cell] and leaf["tags"]["study"] == "pair"
        assert leaf["params"]["model.fusion"] == cell.split("=")[1] and leaf["params"]["data.root"] == str(twin)
        assert leaf["params"]["data.batch_size"] == "16" and leaf["params"]["trainer.max_epochs"] == "1"
        [trial] = search["cells"][cell]["trials"]
        if leaf["tags"]["kind"] == "trial":
            assert (leaf["name"], leaf["tags"]["trial"], leaf["tags"]["state"]) == (f"{cell}/t000", "0", "complete")
            assert float(leaf["params"]["optim.lr"]) == pytest.approx(trial["params"]["optim.lr"])
            assert leaf["metrics"]["final/valid/loss"] == pytest.approx(trial["value"], rel=1e-6)
            assert "final/test/accuracy" not in leaf["metrics"]  # a trial is scored on valid only
        else:
            assert leaf["name"] == f"{cell}/s0" and "trial" not in leaf["tags"] and leaf["tags"]["seed"] == "0"
            metrics = json.loads((study / cell / "s0" / "metrics.json").read_text())
            assert leaf["metrics"]["final/test/accuracy"] == pytest.approx(metrics["test"]["accuracy"], rel=1e-6)
            acc = _events(study / cell / "s0" / "tensorboard")
            assert _text(acc, "tags/cell") == cell and _text(acc, "tags/study") == "pair"
    # the trial's HParams hold the searched setting and its trial number
    settings, _ = _hparams(study / "fusion=hybrid" / "trials" / "t000" / "tensorboard")
    assert settings["trial"] == 0 and settings["model.fusion"] == "hybrid"
    acc = _events(study / "fusion=hybrid" / "trials" / "t000" / "tensorboard")
    assert (_text(acc, "tags/trial"), _text(acc, "tags/state"), _text(acc, "tags/kind")) == ("0", "complete", "trial")
    # the study's comparison is an artifact of the study run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    names = {a.path for a in client.list_artifacts(top["id"])} | {a.path for a in client.list_artifacts(top["id"], "figures")}
    assert {"report.md", "report.csv", "report.json", "figures/forest.png", "figures/metric.png"} <= names
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()  # nothing in the cwd


def test_a_missing_tracker_package_or_unknown_logger_is_one_line(monkeypatch):
    import importlib.util

    from covfuse.training.config import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'covfuse\[mlflow\]'"):
        check_loggers(["csv", "mlflow"])
    with pytest.raises(UserError, match="did you mean 'tensorboard'"):
        check_loggers(["tensorbord"])


def test_a_trials_hparams_record_says_how_it_ended_and_is_replaced_when_that_changes(tmp_path):
    """Pruned and interrupted trials get an HParams record too (not only finished runs), with their state; a new
    state replaces the record, since TensorBoard shows the first record it finds for a run."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    from covfuse.training import config as cfgmod
    from covfuse.training import tracking

    config = cfgmod.parse(["--data.root", str(tmp_path), "--name", "t003", "--runs_dir", str(tmp_path),
                           "--optim.lr", "0.01"], prog="covfuse fit")[0]
    run = tmp_path / "t003"
    (run / "tensorboard").mkdir(parents=True)
    context = tracking.study_context("s", tmp_path, "base", {"optim.lr": 0.01}, trial=3)
    for state, status in [("pruned", api_pb2.STATUS_SUCCESS), ("interrupted", api_pb2.STATUS_FAILURE)]:
        tracking.end_run(run, state, config, context)
        acc = _events(run / "tensorboard")
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
        end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"]).session_end_info
        settings = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert (settings["state"], settings["trial"], settings["optim.lr"], end.status) == (state, 3, 0.01, status)
        assert len(list((run / "tensorboard").glob("*.hparams"))) == 1
    assert {_text_at(acc, "tags/state", i) for i in range(2)} == {"pruned", "interrupted"}


def _text_at(acc, tag: str, i: int) -> str:
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(acc.Tensors(f"{tag}/text_summary")[i].tensor_proto).item().decode()


def test_the_mlflow_ui_extra_installs_the_mlflow_covfuse_logs_with():
    """`pip install covfuse[mlflow-ui]` must not resolve an MLflow older than the client that wrote the store (an older
    MLflow refuses a newer store's schema): the UI extra takes mlflow in the logging extra's range, mlflow X pins
    mlflow-skinny X, and the range starts at the mlflow-skinny requirements.lock pins (the one the tests log with)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    logging_ = {Requirement(r).name: Requirement(r).specifier for r in extras["mlflow"]}
    ui = {Requirement(r).name: Requirement(r).specifier for r in extras["mlflow-ui"]}
    test = {Requirement(r).name: Requirement(r).specifier for r in extras["test"]}
    assert ui["mlflow"] == ui["mlflow-skinny"] == logging_["mlflow-skinny"] == test["mlflow-skinny"]
    pinned = next(line.split("==")[1] for line in (root / "requirements.lock").read_text().splitlines()
                  if line.startswith("mlflow-skinny=="))
    lowest = min(Version(s.version) for s in ui["mlflow"] if s.operator == ">=")
    assert lowest == Version(pinned) and Version(pinned) in ui["mlflow"]
    assert not ui["mlflow"].contains("3.0.0")  # what `mlflow>=3.0` let pip pick under a 3.18 store
