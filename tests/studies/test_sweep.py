"""Studies: grid expansion and naming, idempotent sweeps, resume, SLURM arrays, k-fold CV, the report."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn import metrics as skm

from covfuse.cli.main import main as covfuse
from covfuse.data import read_celeba
from covfuse.errors import UserError
from covfuse.studies.stats import holm
from covfuse.studies.sweep import load_study, plan_study, setting_names, split_values
from covfuse.training import config as cfgmod
from data_fixtures import TINY_STUDY as TINY
from data_fixtures import make_twin



@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    return make_twin(tmp_path_factory, n=200) / "celeba"


@pytest.fixture(scope="module")
def base(tmp_path_factory, twin):
    path = tmp_path_factory.mktemp("cfg") / "base.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "root": str(twin)}}))
    return path


def _read(path: Path, split: str) -> dict[str, np.ndarray]:
    with open(path / "predictions.csv", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if r["split"] == split), key=lambda r: r["id"])
    return {"id": np.array([r["id"] for r in rows]), "group": np.array([r["group"] for r in rows]),
            "y": np.array([int(r["label"]) for r in rows]), "p": np.array([float(r["probability"]) for r in rows])}


# -- planning (no training) ------------------------------------------------------------------------
def test_grid_expands_to_named_cells_seeds_and_parsed_configs(base, tmp_path):
    study = plan_study(name="grid", configs=[str(base)], runs_dir=tmp_path,
                       grid=["model.fusion=image-only,hybrid", "data.covariates=[Young],[Young,Male]"],
                       seeds=[0, 2], overrides=["--optim.lr", "3e-3"])
    assert list(study.cells) == ["fusion=image-only,covariates=Young", "fusion=image-only,covariates=Young+Male",
                                 "fusion=hybrid,covariates=Young", "fusion=hybrid,covariates=Young+Male"]
    assert len(study.runs) == 8 and study.baseline == "fusion=image-only,covariates=Young"
    run = study.runs[7]
    assert Path(run.dir) == tmp_path / "grid" / "fusion=hybrid,covariates=Young+Male" / "s2"
    config = study.run_config(run)
    assert (config.model.fusion, config.data.covariates, config.seed, config.optim.lr) == ("hybrid", ["Young", "Male"], 2, 3e-3)
    assert config.run_dir == Path(run.dir)
    assert split_values("a,[b,c],d") == ["a", "[b,c]", "d"]
    assert setting_names(["model.fusion", "optim.lr", "a.x", "b.x"]) == {
        "model.fusion": "fusion", "optim.lr": "lr", "a.x": "a.x", "b.x": "b.x"}


def test_planning_with_one_parser_gives_the_plan_of_a_fresh_parser_per_run(base, tmp_path, monkeypatch):
    """The sweep parses every run with one parser built once; the plan equals building a new parser for
    each run (parsing leaves the shared parser unchanged)."""
    import dataclasses

    kwargs = dict(name="grid", configs=[str(base)], runs_dir=tmp_path, seeds=[0, 1], overrides=["--optim.lr", "3e-3"],
                  grid=["model.fusion=image-only,hybrid", "data.covariates=[Young],[Young,Male]"])
    shared = plan_study(**kwargs)
    shared_configs = [dataclasses.asdict(shared.run_config(r)) for r in shared.runs]

    def fresh(prog):
        p = cfgmod.parser(prog)
        return p, cfgmod._known_flags(p)

    monkeypatch.setattr(cfgmod, "_plain_parser", fresh)
    study = plan_study(**kwargs)
    assert [dataclasses.asdict(study.run_config(r)) for r in reversed(study.runs)] == shared_configs[::-1]
    assert len({str(c) for c in shared_configs}) == len(shared_configs) == 8


def test_a_study_file_holds_cells_grid_seeds_tune_and_baseline(base, tmp_path):
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump({"optim": {"lr": 0.01}, "sweep": {
        "cells": {"baseline": {"model.fusion": "image-only"}, "hybrid-first": {"model.fusion": "hybrid",
                                                                             "model.hybrid_layers": "first"}},
        "grid": {"data.covariates_mode": ["real", "shuffled"]}, "seeds": [0, 1], "baseline": "baseline,covariates_mode=real",
        "tune": {"optim.weight_decay": [0.0, 0.01]}}}))
    study = plan_study(name="spec", configs=[str(base), str(spec)], runs_dir=tmp_path)
    assert list(study.cells) == ["baseline,covariates_mode=real", "baseline,covariates_mode=shuffled",
                                 "hybrid-first,covariates_mode=real", "hybrid-first,covariates_mode=shuffled"]
    assert len(study.runs) == 4 * 2 * 2  # cells x tuning values x seeds
    run = next(r for r in study.runs if r.cell.startswith("hybrid-first,covariates_mode=shuffled") and r.seed == 1
               and r.tune == {"optim.weight_decay": 0.01})
    assert Path(run.dir).relative_to(tmp_path / "spec").parts == ("hybrid-first,covariates_mode=shuffled", "weight_decay=0.01", "s1")
    c = study.run_config(run)
    assert (c.optim.lr, c.optim.weight_decay, c.model.hybrid_layers, c.data.covariates_mode) == (0.01, 0.01, "first", "shuffled")


@pytest.mark.parametrize("files, cells, runs", [
    (["research/baseline.yaml", "studies/research-celeba.yaml"], 14, 42),
    (["demo.yaml", "studies/twin.yaml"], 12, 36),  # every method of docs/methods.md, three rates each
])
def test_the_shipped_studies_plan(files, cells, runs, tmp_path):
    configs = Path(__file__).resolve().parents[2] / "configs"
    study = plan_study(name="s", configs=[str(configs / f) for f in files], runs_dir=tmp_path,
                       overrides=["--data.root", str(tmp_path)])
    assert (len(study.cells), len(study.runs)) == (cells, runs)


@pytest.mark.parametrize("args, message", [
    (["--grid", "model.fusoin=image-only,hybrid"], "fusoin"),
    (["--grid", "model.fusion"], "KEY=V1,V2"),
    (["--seeds", "0,x"], "--seeds"),
    (["--baseline", "nope", "--grid", "model.fusion=image-only,hybrid"], "baseline 'nope'"),
    (["--trainer.max_epoch", "2"], "max_epoch"),  # no silent abbreviation
    (["--seed", "3"], "use --seeds"),
    (["--data.root", "/no/such/folder"], "no such file or folder"),
    (["--grdi", "x=1"], "did you mean 'grid'"),
])
def test_bad_studies_fail_in_one_line_before_anything_is_written(base, tmp_path, capsys, args, message):
    runs = tmp_path / "runs"
    assert covfuse(["sweep", "--config", str(base), "--name", "bad", "--runs-dir", str(runs), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not runs.exists()


# -- a real sweep ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory, base):
    runs = tmp_path_factory.mktemp("runs")
    args = ["sweep", "--config", str(base), "--name", "st", "--runs-dir", str(runs),
            "--grid", "model.fusion=image-only,hybrid"]
    assert covfuse(args) == 0
    return runs / "st", args


def test_a_second_sweep_starts_nothing_and_an_interrupted_run_is_resumed(swept, capsys):
    study_dir, args = swept
    ckpt = study_dir / "fusion=hybrid" / "s0" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    assert covfuse(args) == 0
    assert "0 trained, 0 resumed, 2 already done" in capsys.readouterr().out
    assert ckpt.stat().st_mtime_ns == before
    # interrupted after its last checkpoint but before evaluation: resumed, not restarted
    (study_dir / "fusion=hybrid" / "s0" / "metrics.json").unlink()
    assert covfuse(args + ["--dry-run"]) == 0
    assert re.search(r"\[1\] resume +fusion=hybrid/s0", capsys.readouterr().out)
    assert covfuse(args) == 0
    assert "0 trained, 1 resumed, 1 already done" in capsys.readouterr().out
    assert json.loads((study_dir / "fusion=hybrid" / "s0" / "metrics.json").read_text())["test"]["count"] > 0


def test_a_different_kind_of_study_or_other_folds_under_the_same_name_is_refused(swept, capsys):
    study_dir, args = swept
    before = (study_dir / "study.json").read_text()
    assert covfuse(["cv", *args[1:], "--folds", "2"]) == 2
    assert "holds a sweep study and this command makes a cv" in capsys.readouterr().err
    assert (study_dir / "study.json").read_text() == before


def test_report_rows_match_an_independent_computation_from_predictions(swept, capsys):
    study_dir, _ = swept
    capsys.readouterr()
    assert covfuse(["report", str(study_dir), "--format", "json", "--bootstrap", "200"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["baseline"] == "fusion=image-only" and report["metric"] == "accuracy"
    keys = {"setting", "settings", "n_runs", "mean", "sd", "ci", "difference", "difference_ci", "p_value",
            "p_adjusted", "verdict"}
    assert all(keys <= set(row) for row in report["rows"])
    base = _read(study_dir / "fusion=image-only" / "s0", "test")
    hyb = _read(study_dir / "fusion=hybrid" / "s0", "test")
    acc_b = skm.accuracy_score(base["y"], base["p"] >= 0.5)
    acc_h = skm.accuracy_score(hyb["y"], hyb["p"] >= 0.5)
    rows = {r["setting"]: r for r in report["rows"]}
    assert rows["fusion=image-only"]["mean"] == pytest.approx(acc_b) and rows["fusion=image-only"]["verdict"] == "baseline"
    h = rows["fusion=hybrid"]
    assert h["settings"] == {"model.fusion": "hybrid"} and h["n_runs"] == 1
    assert h["difference"] == pytest.approx(acc_h - acc_b)
    assert h["p_adjusted"] == pytest.approx(holm([h["p_value"]])[0])
    assert h["verdict"] == ("no evidence" if h["p_adjusted"] >= 0.05 else ("better" if h["difference"] > 0 else "worse"))
    assert report["clusters"] == len(set(base["group"])) < len(base["id"])  # people, not images
    for name in ("report.md", "report.json", "report.csv", "figures/forest.png", "figures/metric.png",
                 "figures/loss_curves.png"):
        assert (study_dir / name).is_file(), name
    assert (study_dir / "figures" / "forest.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote report.md, report.json, report.csv, figures/forest.png" in err
    # another metric is written beside the default report, not over it
    default = (study_dir / "report.json").read_text()
    assert covfuse(["report", str(study_dir), "--metric", "auroc", "--format", "json", "--bootstrap", "200"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["metric"] == "auroc" and "wrote report-auroc.md, report-auroc.json" in captured.err
    assert (study_dir / "report.json").read_text() == default
    assert json.loads((study_dir / "report-auroc.json").read_text())["metric"] == "auroc"
    assert "figures/forest-auroc.png" in (study_dir / "report-auroc.md").read_text()
    assert (study_dir / "figures" / "forest-auroc.png").read_bytes()[:4] == b"\x89PNG"


def test_slurm_array_has_one_task_per_run_and_a_task_runs_the_same_code_as_a_local_sweep(base, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["sweep", "--config", str(base), "--name", "arr", "--runs-dir", str(runs),
            "--grid", "model.fusion=image-only,concat", "--seeds", "0,1"]
    assert covfuse(args + ["--launcher", "slurm", "--partition", "gpu", "--gpus", "1", "--time", "01:00:00"]) == 0
    script = runs / "arr" / "slurm" / "sweep.sbatch"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "#SBATCH --array=0-3\n" in text and "#SBATCH --partition=gpu" in text and "#SBATCH --gres=gpu:1" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    command = shlex.split(srun.replace('"$SLURM_ARRAY_TASK_ID"', "2"))[1:]
    # covfuse by the absolute path of this environment (a job's PATH is the login shell's)
    assert command[:3] == [sys.executable, "-m", "covfuse.cli"] or command[0] == str(Path(sys.executable).parent / "covfuse")
    command = command[command.index("sweep") - 1:]
    assert command[1] == "sweep" and command[-2:] == ["--task", "2"]
    cwd = os.getcwd()
    try:
        os.chdir(next(line for line in text.splitlines() if line.startswith("cd ")).split(" ", 1)[1].strip("'"))
        assert covfuse(command[1:]) == 0
    finally:
        os.chdir(cwd)
    study = load_study(runs / "arr")
    run = study.runs[2]
    assert (run.cell, run.seed) == ("fusion=concat", 0)
    made = cfgmod.load(Path(run.dir) / "config.yaml")
    assert cfgmod.dump(made) == cfgmod.dump(study.run_config(run))
    assert sorted(p.name for p in (runs / "arr").iterdir() if p.is_dir()) == ["fusion=concat", "slurm"]
    capsys.readouterr()
    assert covfuse(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\[2\] skip +fusion=concat/s0", out) and re.search(r"\[3\] train +fusion=concat/s1", out)


def test_cv_out_of_fold_predictions_cover_train_and_valid_once_and_folds_share_no_identity(base, tmp_path, twin, capsys):
    runs = tmp_path / "runs"
    assert covfuse(["cv", "--config", str(base), "--name", "cv", "--runs-dir", str(runs), "--folds", "2",
                    "--model.fusion", "image-only"]) == 0
    study = load_study(runs / "cv")
    assert study.kind == "cv" and [Path(r.dir).name for r in study.runs] == ["s0-fold0", "s0-fold1"]
    meta = read_celeba(twin)
    pool = set(np.array(meta.filenames)[meta.split != 2])
    parts = [_read(Path(r.dir), "valid") for r in study.runs]
    assert sorted(np.concatenate([p["id"] for p in parts])) == sorted(pool)  # every train+valid image once
    assert not set(parts[0]["group"]) & set(parts[1]["group"])  # no person in two folds
    capsys.readouterr()
    assert covfuse(["report", str(runs / "cv"), "--format", "json", "--bootstrap", "200"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == len(pool) and report["split"].startswith("out-of-fold")
    oof = {k: np.concatenate([p[k] for p in parts]) for k in ("y", "p")}
    assert report["rows"][0]["estimate"] == pytest.approx(skm.accuracy_score(oof["y"], oof["p"] >= 0.5))


def test_report_refuses_an_unfinished_study_and_unknown_names(tmp_path, base, capsys):
    assert covfuse(["report", "nothing-here", "--runs-dir", str(tmp_path)]) == 2
    assert "no study 'nothing-here'" in capsys.readouterr().err
    study = plan_study(name="todo", configs=[str(base)], runs_dir=tmp_path, grid=["model.fusion=image-only,hybrid"])
    from covfuse.studies.sweep import write_study

    write_study(study)
    assert covfuse(["report", "todo", "--runs-dir", str(tmp_path)]) == 2
    assert "2 of 2 runs of study todo are not finished" in capsys.readouterr().err
    with pytest.raises(UserError, match="baseline 'x'"):
        plan_study(name="b", configs=[str(base)], runs_dir=tmp_path, baseline="x")


def test_a_failing_run_does_not_stop_the_others(base, tmp_path, capsys, monkeypatch):
    from covfuse.training import run as runmod

    real_fit = runmod.fit_run

    def fit(config, **kw):  # a failure no check can see coming (the machine, not the settings)
        if config.model.fusion == "concat":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_fit(config, **kw)

    monkeypatch.setattr(runmod, "fit_run", fit)
    runs = tmp_path / "runs"
    args = ["sweep", "--config", str(base), "--name", "mixed", "--runs-dir", str(runs),
            "--grid", "model.fusion=concat,image-only"]
    assert covfuse(args) == 2
    err = capsys.readouterr().err
    assert "1 run(s) of study mixed failed" in err and "fusion=concat" in err and "again" in err
    assert json.loads((runs / "mixed" / "fusion=image-only" / "s0" / "metrics.json").read_text())["test"]["count"] > 0
    assert not (runs / "mixed" / "fusion=concat" / "s0").exists()
