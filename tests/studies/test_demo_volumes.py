"""`covfuse demo --volumes` at toy scale: the MRI twin, 3D runs through the study code, the contract shape."""
from __future__ import annotations

import csv
import json

from covfuse.cli.main import main as covfuse


def test_demo_volumes_runs_the_study_on_the_mri_twin(tmp_path, capsys):
    out, twin = tmp_path / "out", tmp_path / "twin"
    args = ["demo", "--volumes", "--out", str(out), "--data", str(twin), "--n", "30", "--size", "16", "--epochs", "1",
            "--methods", "image-only,covariates-only,film", "--bootstrap", "50"]
    assert covfuse(args) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["image-only", "covariates-only", "film"]
    assert set(results["comparisons"]) == {"covariates-only", "film"}
    synth = json.loads((twin / "synth.json").read_text())
    assert synth["size"] == 16 and synth["n"] == 30
    subjects = {r["path"]: r["subject"] for r in csv.DictReader(open(twin / "manifest.csv"))}
    predictions = list(csv.DictReader(open(out / "film" / "s0" / "predictions.csv")))
    assert predictions and all(p["group"] == subjects[p["id"]] for p in predictions)  # clusters are subjects
    config = (out / "film" / "s0" / "config.yaml").read_text()
    assert "resnet3d-compact" in config and "manifest.csv" in config
    report = (out / "report.md").read_text()
    assert "brain-MRI twin" in report and "0.950" in report
    # a second run reuses the twin (no rewrite) and keeps the finished methods (none retrained)
    before = (twin / "manifest.csv").stat().st_mtime_ns
    stamps = {m: (out / m / "s0" / "metrics.json").stat().st_mtime_ns for m in ("image-only", "film")}
    assert covfuse([*args[:-4], "--methods", "image-only,covariates-only", "--bootstrap", "50"]) == 0
    assert (twin / "manifest.csv").stat().st_mtime_ns == before
    printed = capsys.readouterr().out
    assert "reusing the synthetic twin" in printed and "image-only/s0: done already" in printed
    assert {m: (out / m / "s0" / "metrics.json").stat().st_mtime_ns for m in stamps} == stamps


def test_the_volume_study_plans_every_method_over_three_seeds(tmp_path):
    from pathlib import Path

    from covfuse.studies.sweep import plan_study

    configs = Path(__file__).resolve().parents[2] / "configs" / "volumes"
    study = plan_study(name="s", configs=[str(configs / "demo.yaml"), str(configs / "study.yaml")], runs_dir=tmp_path,
                       overrides=["--data.root", str(tmp_path / "manifest.csv")], check_data=False)
    assert (len(study.cells), len(study.runs)) == (12, 36)
    from covfuse.models import list_fusions

    assert {c.split("/")[0] for c in study.cells} == set(list_fusions()) - {"hybrid+concat", "hybrid+film", "hybrid+daft"}
    config = study.run_config(study.runs[0])
    assert config.model.backbone == "resnet3d-compact" and config.data.classes == ["CN", "AD"]


def test_the_demo_report_names_where_film_and_daft_sit_now():
    """The 3D demo's report header named DAFT's place before issue 26 moved it (the input of the last stage);
    it must name the place the built model uses."""
    from covfuse.models.builder import build
    from covfuse.studies.demo import context_lines
    from covfuse.training.config import parse

    config = parse(["--config", "configs/volumes/demo.yaml", "--data.root", "unused"])[0]
    text = "\n".join(context_lines({"size": 32, "n": 10, "effect": "planted", "seed": 0, "rule": "r"}, config))
    for fusion, key in (("daft", "daft_layer"), ("film", "film_layers")):
        place = build(config.model.backbone, fusion, 2).config[key]
        place = place[0] if isinstance(place, list) else place
        assert f"`{place}`" in text, (place, text)
    assert "input of the last residual stage" not in text
