"""`covfuse demo` at toy scale: the contract shape of results.json, the report, the output-folder policy."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from covfuse.cli.main import main as covfuse

DEMO_YAML = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """configs/demo.yaml at 32 px and batch 32, so the toy demo takes seconds."""
    text = DEMO_YAML.read_text().replace("image_size: 64", "image_size: 32").replace("batch_size: 64", "batch_size: 32")
    assert "image_size: 32" in text
    path = tmp_path_factory.mktemp("cfg") / "demo.yaml"
    path.write_text(text)
    return path


def demo_args(out, data, config, *extra):
    return ["demo", "--out", str(out), "--data", str(data), "--config", str(config), "--n", "300", "--epochs", "1",
            "--image-size", "44x54", "--bootstrap", "100", *extra]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, small_config):
    base = tmp_path_factory.mktemp("demo")
    assert covfuse(demo_args(base / "out", base / "twin", small_config)) == 0
    return base


def _check_interval(run, split, s):
    """The accuracy CI against the cluster (linearised) standard error computed here from predictions.csv:
    its half-width is t(G-1) x SE up to bootstrap noise (100 resamples), and it is centred on the estimate."""
    import csv

    import numpy as np
    from scipy import stats as sps

    rows = [r for r in csv.DictReader(open(run / "predictions.csv")) if r["split"] == split]
    correct = np.array([(float(r["probability"]) >= 0.5) == (r["label"] == "1") for r in rows], dtype=float)
    groups = np.array([r["group"] for r in rows])
    acc = correct.mean()
    assert s["accuracy"] == pytest.approx(acc)
    names = np.unique(groups)
    residual = np.array([(correct[groups == g] - acc).sum() for g in names])
    se = np.sqrt(len(names) / (len(names) - 1) * (residual ** 2).sum()) / len(correct)
    lo, hi = s["accuracy_ci"]
    if se > 0 and 0 < lo and hi < 1:  # not clipped at a bound
        half = (hi - lo) / 2
        assert 0.7 < half / (sps.t.ppf(0.975, len(names) - 1) * se) < 1.4, (half, se)
        assert (lo + hi) / 2 == pytest.approx(acc, abs=1e-9)


def test_results_json_has_the_contract_shape(demo):
    results = json.loads((demo / "out" / "results.json").read_text())
    assert list(results) == ["methods", "comparisons"]
    assert list(results["methods"]) == ["image-only", "covariates-only", "concat", "film", "daft", "hybrid"]
    for method, entry in results["methods"].items():
        assert set(entry) == {"valid", "test"}, method
        for split in ("valid", "test"):
            s = entry[split]
            for key in ("accuracy", "f1", "auroc", "balanced_accuracy"):
                assert isinstance(s[key], float), (method, key)
            _check_interval(demo / "out" / method / "s0", split, s)
            assert isinstance(s["groups"], dict) and any(k.startswith("Young=") for k in s["groups"])
            assert any(k.startswith("Young=") and "&Male=" in k for k in s["groups"])
        run = json.loads((demo / "out" / method / "s0" / "metrics.json").read_text())
        assert entry["test"] == run["test"]  # copied from the run, not recomputed differently
        assert entry["test"]["ci_method"] == "cluster"
    assert set(results["comparisons"]) == set(results["methods"]) - {"image-only"}
    for method, c in results["comparisons"].items():
        assert set(c) >= {"difference", "ci", "p_value", "verdict"} and c["verdict"] in ("better", "worse", "no evidence")
        diff = results["methods"][method]["test"]["accuracy"] - results["methods"]["image-only"]["test"]["accuracy"]
        assert c["difference"] == pytest.approx(diff)


def test_report_figures_and_comparisons(demo):
    out = demo / "out"
    report = (out / "report.md").read_text()
    for text in ("Bayes", "image-only", "covariates-only", "concat", "film", "daft", "hybrid", "figures/metric.png",
                 "figures/forest.png", "figures/loss_curves.png", "hybrid/s0/metrics.json", "McNemar", "Subgroup gaps",
                 "people"):
        assert text in report, text
    for png in ("figures/metric.png", "figures/forest.png", "figures/loss_curves.png", "hybrid/s0/plots/loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    summary = json.loads((out / "demo.json").read_text())
    results = json.loads((out / "results.json").read_text())["methods"]
    synth = json.loads((demo / "twin" / "synth.json").read_text())
    assert summary["bayes_accuracy"] == synth["bayes_accuracy"]
    diff = results["hybrid"]["test"]["accuracy"] - results["image-only"]["test"]["accuracy"]
    assert summary["comparisons"]["hybrid"]["difference"] == pytest.approx(diff)
    assert summary["wall_seconds"] > 0 and "hybrid" in summary["timings"]
    assert "[sweep] [6/6] hybrid/s0" in (out / "log.txt").read_text()


def test_demo_keeps_its_finished_methods_and_reuses_the_twin(demo, small_config, capsys):
    out = demo / "out"
    (out / "notes.txt").write_text("mine")
    stamps = {m: (out / m / "s0" / "metrics.json").stat().st_mtime_ns for m in ("image-only", "hybrid")}
    capsys.readouterr()
    assert covfuse(demo_args(out, demo / "twin", small_config, "--methods", "image-only,covariates-only")) == 0
    printed = capsys.readouterr().out
    assert "reusing the synthetic twin" in printed and "image-only, covariates-only finished already, kept" in printed
    assert (out / "notes.txt").read_text() == "mine"  # nothing is removed
    assert {m: (out / m / "s0" / "metrics.json").stat().st_mtime_ns for m in stamps} == stamps  # nor retrained
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["image-only", "covariates-only"]
    # other settings for finished methods: refused, naming the key; nothing retrained
    assert covfuse([*demo_args(out, demo / "twin", small_config, "--methods", "image-only"), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs 1 -> 2" in err and "--overwrite" in err and "--out" in err
    assert (out / "image-only" / "s0" / "metrics.json").stat().st_mtime_ns == stamps["image-only"]


def test_an_interrupted_demo_resumes_and_its_resume_command_carries_every_option(tmp_path, small_config, capsys,
                                                                                monkeypatch):
    import os
    import shlex
    import signal

    from covfuse.training.resume import Interruption

    out, twin = tmp_path / "out", tmp_path / "twin"
    args = demo_args(out, twin, small_config, "--methods", "image-only,concat", "--effect", "null")
    original = Interruption.on_train_batch_start

    def hook(self, trainer, pl_module, batch, batch_idx):  # SIGINT while concat trains
        if "concat" in str(self.last) and trainer.global_step == 2 and self.received is None:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(Interruption, "on_train_batch_start", hook)
    assert covfuse(args) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    command = shlex.split(err.split("continue it with: ", 1)[1].strip())
    assert command[:2] == ["covfuse", "demo"] and command[2:] == args[1:]  # every option, as given
    done = (out / "image-only" / "s0" / "metrics.json").stat().st_mtime_ns
    assert (out / "concat" / "s0" / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setattr(Interruption, "on_train_batch_start", original)
    assert covfuse(command[1:]) == 0
    printed = capsys.readouterr().out
    assert "image-only/s0: done already" in printed and "concat/s0: resuming from its last checkpoint" in printed
    assert (out / "image-only" / "s0" / "metrics.json").stat().st_mtime_ns == done
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["image-only", "concat"]


def test_demo_refuses_a_foreign_folder_and_bad_options(tmp_path, small_config, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):  # never deleted, not even with --overwrite
        assert covfuse(demo_args(foreign, tmp_path / "twin", small_config, *extra)) == 2
        assert "not written by `covfuse demo`" in capsys.readouterr().err and (foreign / "thesis.tex").exists()
    assert covfuse(demo_args(tmp_path / "o", tmp_path / "twin", small_config, "--methods", "hybrid,resnet")) == 2
    assert "unknown demo method 'resnet'" in capsys.readouterr().err
    assert covfuse(["demo", "--effect", "strong"]) == 2
    assert "--effect strong: choose from planted, null" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["missing", "unknown-key"])
def test_a_bad_config_fails_before_the_output_or_the_twin_is_touched(tmp_path, small_config, capsys, bad):
    out = tmp_path / "d"
    out.mkdir()
    for name, text in ((".covfuse-demo", "marker\n"), ("results.json", "{}\n"), ("report.md", "# old\n")):
        (out / name).write_text(text)
    config = tmp_path / "missing.yaml"
    if bad == "unknown-key":
        config.write_text(small_config.read_text() + "\nno_such_setting: 1\n")
    twin = tmp_path / "tw"
    assert covfuse(demo_args(out, twin, config)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".covfuse-demo", "report.md", "results.json"]
    assert (out / "report.md").read_text() == "# old\n"
    assert not twin.exists()
