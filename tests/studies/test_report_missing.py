"""`covfuse report` always answers: a study with a failed run gets the report of what finished, naming the
run that is missing and marking its cell; a score that cannot be computed shows as — with its reason in
markdown, HTML, CSV and JSON, and gets no verdict; a one-run cell's interval is its run's own; the baseline
row reads alike in every format; no figure is drawn empty."""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import pytest

from covfuse.cli.main import main as covfuse

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "survival.yaml"
TINY = ["--data.image_size", "16", "--data.batch_size", "8", "--data.cache", "off", "--trainer.max_epochs", "1",
        "--trainer.summary", "false", "--trainer.progress", "none", "--bootstrap", "60"]
IBS_REASON = "needs two evaluation times inside this split's follow-up"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Three survival cells, one evaluation time (so no run has an IBS), and the concat run failing."""
    from covfuse.training import run as runmod

    root = tmp_path_factory.mktemp("partial")
    assert covfuse(["data", "synth3d", str(root / "t"), "--n", "48", "--size", "16", "--seed", "1", "--survival"]) == 0
    real_fit = runmod.fit_run

    def fit(config, **kw):  # a failure no check can see coming (the machine, not the settings)
        if config.model.fusion == "concat":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_fit(config, **kw)

    runmod.fit_run = fit
    try:
        assert covfuse(["sweep", "--config", str(CONFIG), "--data.root", str(root / "t" / "manifest.csv"), *TINY,
                        "--grid", "model.fusion=image-only,covariates-only,concat", "--seeds", "0",
                        "--data.eval_times", "[1]", "--runs_dir", str(root / "runs"), "--name", "part"]) == 2
    finally:
        runmod.fit_run = real_fit
    return root / "runs" / "part"


def _report(study: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert covfuse(["report", str(study), "--format", "json", "--bootstrap", "200", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_study_with_a_failed_run_gets_the_report_of_what_finished_naming_the_failure(study, capsys):
    report = _report(study, capsys)
    assert [m["run"] for m in report["missing"]] == ["fusion=concat/s0"]
    assert report["missing"][0]["state"] == "failed" and "CUDA error" in report["missing"][0]["error"]
    rows = {r["setting"]: r for r in report["rows"]}
    concat = rows["fusion=concat"]
    assert concat["n_runs"] == 0 and concat["estimate"] is None and concat["verdict"] is None
    assert concat["estimate_reason"] == "no finished run in this cell" and concat["missing_runs"] == ["fusion=concat/s0"]
    assert rows["fusion=covariates-only"]["estimate"] is not None and rows["fusion=covariates-only"]["verdict"]
    md = (study / "report.md").read_text()
    assert "fusion=concat/s0: failed (CUDA error: an illegal memory access was encountered)" in md
    assert "| fusion=concat † | 0 |" in md and "**Made of the runs that finished**: 1 run of 3 missing" in md
    assert "Sweep: 3 cells, seed 0;" in md  # plurals
    assert covfuse(["report", str(study), "--format", "html", "--bootstrap", "200"]) == 0
    page = (study / "report.html").read_text()
    assert '<h2 id="missing">Runs missing</h2>' in page and "fusion=concat/s0: failed (CUDA error" in page


def test_a_null_score_shows_as_a_dash_with_its_reason_in_every_format_and_gets_no_verdict(study, capsys):
    report = _report(study, capsys, "--metric", "ibs")
    for row in report["rows"]:
        assert row["estimate"] is None and row["difference"] is None and row["verdict"] in (None, "baseline")
        if row["n_runs"]:
            assert IBS_REASON in row["estimate_reason"]
            own = json.loads((study / row["setting"] / "s0" / "metrics.json").read_text())["test"]
            assert own["ibs"] is None and IBS_REASON in own["ibs_reason"]  # the run's own words
        if row["verdict"] is None:
            assert row["verdict_reason"]
    md = (study / "report-ibs.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| fusion=covariates-only |")][0]
    assert "—¹" in table and "nan" not in md.lower() and "no evidence" not in table
    note = next(line for line in md.splitlines() if line.startswith("¹ "))
    assert IBS_REASON in note
    # nothing to draw: neither a forest plot nor metric bars, and the markdown links none
    assert not (study / "figures" / "forest-ibs.png").exists() and not (study / "figures" / "metric-ibs.png").exists()
    assert "forest-ibs.png" not in md and "metric-ibs.png" not in md
    assert covfuse(["report", str(study), "--metric", "ibs", "--format", "html", "--bootstrap", "200"]) == 0
    page = (study / "report.html").read_text()
    assert "—¹" in page and html.escape(IBS_REASON) in page and 'id="forest"' not in page
    rows = list(csv.DictReader(io.StringIO((study / "report-ibs.csv").read_text())))
    cov = next(r for r in rows if r["setting"] == "fusion=covariates-only")
    assert cov["estimate"] == "" and IBS_REASON in cov["notes"] and cov["verdict"] == ""


def test_one_interval_per_run_one_number_format_and_one_baseline_row(study, capsys):
    report = _report(study, capsys)
    rows = {r["setting"]: r for r in report["rows"]}
    for name in ("fusion=image-only", "fusion=covariates-only"):
        own = json.loads((study / name / "s0" / "metrics.json").read_text())["test"]
        assert rows[name]["ci"] == pytest.approx(own["c_index_ci"], abs=1e-12)  # the run's own interval
        assert rows[name]["estimate"] == pytest.approx(own["c_index"], abs=1e-12)
        assert rows[name]["also"]["td_auc"]["ci"] == pytest.approx(own["td_auc_ci"], abs=1e-12)
    base = rows[report["baseline"]]
    assert base["difference"] is None and base["p_value"] is None and base["verdict"] == "baseline"
    table = list(csv.DictReader(io.StringIO((study / "report.csv").read_text())))
    for r in table:  # report.csv holds report.json's numbers, written the same way
        j = rows[r["setting"]]
        for key in ("mean", "estimate", "difference", "p_value", "p_adjusted"):
            assert r[key] == ("" if j[key] is None else repr(j[key]))
        assert [r["ci_lo"], r["ci_hi"]] == ["" if v is None else repr(v) for v in j["ci"]]
    csv_base = next(r for r in table if r["setting"] == report["baseline"])
    assert csv_base["difference"] == csv_base["p_value"] == "" and csv_base["verdict"] == "baseline"
    md = (study / "report.md").read_text()
    md_base = next(line for line in md.splitlines() if line.startswith(f"| {report['baseline']} |"))
    assert md_base.split(" | ")[4:7] == ["—", "—", "—"] and md_base.endswith("| baseline |")
