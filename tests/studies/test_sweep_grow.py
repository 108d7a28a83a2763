"""The life of a study, driven through the CLI: check first, grow, refuse changed settings, --overwrite
only what changed, --dry-run's truth, processes sharing a study, `covfuse status`, split seeds (a shared search
and killed processes: test_processes.py)."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.studies.sweep import claim_path, load_study
from covfuse.training.lock import Claim
from data_fixtures import TINY_STUDY as TINY
from data_fixtures import make_twin



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    twin = make_twin(tmp_path_factory, n=200) / "celeba"
    path = tmp_path_factory.mktemp("cfg") / "base.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(twin)}}))
    return path


def sweep(base, runs, name, *extra):
    return ["sweep", "--config", str(base), "--name", name, "--runs-dir", str(runs), *extra]


def stamp(run: Path) -> int:
    return (run / "metrics.json").stat().st_mtime_ns


# -- 1. everything is checked before anything trains ------------------------------------------------
@pytest.mark.parametrize("command, grid, message", [
    ("sweep", "model.fusion=image-only,hybird", "did you mean 'hybrid'"),
    ("sweep", "model.backbone=vgg-mini,resnt18", "did you mean 'resnet18'"),
    ("sweep", "data.covariates=[Young],[Yung]", "did you mean 'Young'"),
    ("sweep", "model.hybrid_layers=first,lsat", "'lsat' is not one of the convolutions"),
    ("cv", "model.fusion=image-only,flim", "did you mean 'film'"),
])
def test_a_bad_grid_value_is_one_line_before_anything_trains_or_is_written(base, tmp_path, capsys, command, grid, message):
    runs = tmp_path / "runs"
    args = sweep(base, runs, "typo", "--grid", grid) + (["--folds", "2"] if command == "cv" else [])
    args[0] = command
    for extra in ([], ["--dry-run"]):
        assert covfuse(args + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert re.search(r"run \S+=\S+/s0", err)  # names the run whose value is bad
        assert not runs.exists()


# -- 2./3. a study grows; changed settings are refused, --overwrite retrains only those ---------------
def test_a_study_grows_and_a_changed_setting_is_refused_naming_the_keys(base, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert covfuse(sweep(base, runs, "g", "--grid", "model.fusion=image-only")) == 0
    first = runs / "g" / "fusion=image-only" / "s0"
    before = stamp(first)
    capsys.readouterr()
    # add a seed and a grid value: --dry-run says what will happen, then only the new runs train
    grow = sweep(base, runs, "g", "--grid", "model.fusion=image-only,concat", "--seeds", "0,1")
    assert covfuse(grow + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[0\] skip +fusion=image-only/s0 .*done already", out)
    assert re.search(r"\[1\] train +fusion=image-only/s1 .*new", out) and "would train 3, skip 1" in out
    assert json.loads((runs / "g" / "study.json").read_text())["seeds"] == [0]  # a dry run writes nothing
    assert covfuse(grow) == 0
    assert "3 trained, 0 resumed, 1 already done" in capsys.readouterr().out
    assert stamp(first) == before
    study = load_study(runs / "g")
    assert study.seeds == [0, 1] and list(study.cells) == ["fusion=image-only", "fusion=concat"]
    # a command naming fewer runs keeps the others in the study (nothing is dropped)
    assert covfuse(sweep(base, runs, "g", "--grid", "model.fusion=image-only")) == 0
    assert len(load_study(runs / "g").runs) == 4
    # a changed setting: refused before anything is written, naming the key old -> new; dry-run agrees
    record = (runs / "g" / "study.json").read_text()
    capsys.readouterr()
    assert covfuse(grow + ["--optim.lr", "0.003", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"\[0\] refuse +fusion=image-only/s0 .*optim.lr 0.001 -> 0.003", captured.out)
    assert covfuse(grow + ["--optim.lr", "0.003"]) == 2
    err = capsys.readouterr().err
    assert "4 run(s) of study g were trained with other settings" in err and "optim.lr 0.001 -> 0.003" in err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err
    assert (runs / "g" / "study.json").read_text() == record and stamp(first) == before


def test_overwrite_retrains_only_the_cells_whose_settings_changed(base, tmp_path, capsys):
    runs = tmp_path / "runs"
    spec = tmp_path / "study.yaml"

    def write(b_fusion):
        spec.write_text(yaml.safe_dump({"sweep": {"cells": {"a": {"model.fusion": "image-only"},
                                                            "b": {"model.fusion": b_fusion}}}}))

    write("concat")
    args = ["sweep", "--config", str(base), "--config", str(spec), "--name", "ow", "--runs-dir", str(runs)]
    assert covfuse(args) == 0
    a, b = runs / "ow" / "a" / "s0", runs / "ow" / "b" / "s0"
    stamps = stamp(a), stamp(b)
    write("film")
    capsys.readouterr()
    assert covfuse(args) == 2
    err = capsys.readouterr().err
    assert "1 run(s)" in err and "b/s0" in err and "model.fusion concat -> film" in err
    assert covfuse(args + ["--overwrite", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[0\] skip +a/s0", out) and re.search(r"\[1\] replace +b/s0 .*concat -> film", out)
    assert covfuse(args + ["--overwrite"]) == 0
    assert "1 retrained (settings changed), 1 already done" in capsys.readouterr().out
    assert stamp(a) == stamps[0] and stamp(b) != stamps[1]
    assert yaml.safe_load((b / "config.yaml").read_text())["model"]["fusion"] == "film"


def test_dry_run_says_resume_for_an_interrupted_run_and_the_real_run_does_it(base, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = sweep(base, runs, "dr", "--model.fusion", "image-only", "--seeds", "0,1")
    assert covfuse(args) == 0
    (runs / "dr" / "base" / "s1" / "metrics.json").unlink()  # stopped after its last checkpoint
    capsys.readouterr()
    assert covfuse(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[0\] skip +base/s0", out) and re.search(r"\[1\] resume +base/s1 .*last checkpoint", out)
    assert covfuse(args) == 0
    assert "0 trained, 1 resumed, 1 already done" in capsys.readouterr().out


# -- 5./6. processes share a study; covfuse status -------------------------------------------------
def test_a_run_another_process_trains_is_skipped_said_and_listed_and_status_shows_every_state(
        base, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    args = sweep(base, runs, "co", "--grid", "model.fusion=image-only,concat,film", "--seeds", "0,1")
    assert covfuse(args[:-2] + ["--seeds", "0"]) == 0  # three runs done, each with its fit_seconds
    study = load_study(runs / "co")
    study_dir = Path(study.study_dir)
    # another process holds image-only/s1 (the claim a sweep takes); film/s1 fails at run time
    from covfuse.training import run as runmod

    real_fit = runmod.fit_run

    def failing(config, **kw):
        if config.model.fusion == "film" and config.seed == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_fit(config, **kw)

    monkeypatch.setattr(runmod, "fit_run", failing)
    from covfuse.studies.sweep import Run

    held = Run(0, "fusion=image-only", 1, str(study_dir / "fusion=image-only" / "s1"), {})
    with Claim(claim_path(held)):
        capsys.readouterr()
        assert covfuse(args) == 2  # the failure, not the busy run, makes the exit status
        captured = capsys.readouterr()
        assert f"fusion=image-only/s1: being trained by another process (pid {os.getpid()}" in captured.out
        assert "1 run(s) being trained by another process, not waited for: fusion=image-only/s1" in captured.out
        assert "--overwrite" not in captured.err
        assert covfuse(["status", str(study_dir), "--format", "json"]) == 0
        status = json.loads(capsys.readouterr().out)
    plan = {(r.cell, r.seed): r for r in load_study(runs / "co").runs}
    assert set(status) >= {"study", "runs", "counts"} and status["study"] == "co"
    rows = {(r["cell"], r["seed"]): r for r in status["runs"]}
    assert all(set(r) >= {"cell", "seed", "fold", "state", "seconds", "error"} for r in status["runs"])
    running = rows[("fusion=image-only", 1)]
    assert running["state"] == "running" and running["pid"] == os.getpid() and running["since"]
    assert rows[("fusion=film", 1)]["state"] == "failed" and "out of memory" in rows[("fusion=film", 1)]["error"]
    for key in [("fusion=image-only", 0), ("fusion=concat", 0), ("fusion=concat", 1), ("fusion=film", 0)]:
        fit = json.loads((Path(plan[key].dir) / "metrics.json").read_text())["fit_seconds"]
        assert rows[key]["state"] == "done" and rows[key]["seconds"] == fit
    # the claim released: pending; an interrupted run (checkpoint, no metrics): interrupted
    (Path(plan[("fusion=concat", 1)].dir) / "metrics.json").unlink()
    assert covfuse(["status", "co", "--runs-dir", str(runs), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    states = [r["state"] for r in status["runs"]]
    assert status["counts"] == {s: states.count(s) for s in ("done", "running", "interrupted", "failed", "pending")}
    assert status["counts"] == {"done": 3, "running": 0, "interrupted": 1, "failed": 1, "pending": 1}
    done = [r["seconds"] for r in status["runs"] if r["state"] == "done"]
    assert status["seconds_left"] == pytest.approx(sum(done) / len(done) * 3, abs=0.2)
    assert covfuse(["status", "co", "--runs-dir", str(runs)]) == 0
    text = capsys.readouterr().out
    assert "3 done, 1 interrupted, 1 failed, 1 pending" in text and "CUDA out of memory" in text and "time left" in text


def test_two_sweep_processes_on_one_new_study_with_mlflow_train_each_run_once_and_both_succeed(base, tmp_path):
    """Both start together on a new study whose runs log to MLflow's default SQLite store: the store is created
    once (MLflow's schema migration, which two processes must not run at once), each run trained by one of them."""
    MlflowClient = pytest.importorskip("mlflow.tracking", reason="covfuse[mlflow] is not installed").MlflowClient
    runs = tmp_path / "runs"
    args = sweep(base, runs, "two", "--seeds", "0,1", "--trainer.logger", "[csv,mlflow]")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).parents[2] / "src"),
                                                     os.environ.get("PYTHONPATH", "")] if p)}
    procs = [subprocess.Popen([sys.executable, "-m", "covfuse.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert not any("already exists" in out + err for out, err in outs)
    trained = [line for out, _ in outs for line in out.splitlines() if line.endswith(": training")]
    assert sorted(re.search(r"\] (\S+): training", line).group(1) for line in trained) == ["base/s0", "base/s1"]
    for out, _ in outs:  # whatever one process did not train, it found done or being trained
        summary = out.strip().splitlines()[-1]
        n = [int(x) for x in re.search(r"(\d+) trained, (\d+) resumed, (\d+) already done", summary).groups()]
        busy = int(m.group(1)) if (m := re.search(r"(\d+) being trained by another process", summary)) else 0
        assert sum(n) + busy == 2
    assert all((Path(r.dir) / "metrics.json").is_file() for r in load_study(runs / "two").runs)
    client = MlflowClient(f"sqlite:///{runs / 'two' / 'mlflow.db'}")  # MLflow's own reader
    found = client.search_runs([client.get_experiment_by_name("two").experiment_id])
    assert sorted(r.info.run_name for r in found) == ["base", "base/s0", "base/s1", "two"]
    assert {r.info.status for r in found} == {"FINISHED"}


# -- 7. splits come from data.split_seed, not the run seed ---------------------------------------------
@pytest.fixture(scope="module")
def unsplit_manifest(tmp_path_factory):
    from covfuse.data.twins.brains import write_synth3d

    folder = write_synth3d(tmp_path_factory.mktemp("vol") / "twin", n=30, size=16)
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    out = folder / "nosplit.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, [k for k in rows[0] if k != "split"])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != "split"} for r in rows)
    return out


def test_seeds_vary_training_not_the_test_set_and_a_study_over_split_seeds_is_refused(unsplit_manifest, tmp_path, capsys):
    config = tmp_path / "vol.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(unsplit_manifest), "target": "diagnosis", "covariates": ["age", "sex", "APOE4"],
                 "image_size": 16, "batch_size": 4, "classes": ["CN", "AD"], "cache": "off"},
        "model": {"backbone": "resnet3d-compact", "fusion": "image-only"},
        "trainer": {"max_epochs": 1, "summary": False, "progress": "none"}, "bootstrap": 0}))
    runs = tmp_path / "runs"
    assert covfuse(["sweep", "--config", str(config), "--name", "v", "--runs-dir", str(runs), "--seeds", "0,1"]) == 0

    def ids(seed, split):
        with open(runs / "v" / "base" / f"s{seed}" / "predictions.csv", newline="") as f:
            return sorted(r["id"] for r in csv.DictReader(f) if r["split"] == split)

    assert ids(0, "test") == ids(1, "test") and ids(0, "valid") == ids(1, "valid") and ids(0, "test")
    capsys.readouterr()
    bad = ["sweep", "--config", str(config), "--name", "w", "--runs-dir", str(runs), "--grid", "data.split_seed=0,1"]
    assert covfuse(bad) == 2
    err = capsys.readouterr().err
    assert "scored on different samples" in err and "data.split_seed" in err and len(err.strip().splitlines()) == 1
    assert not (runs / "w").exists()
