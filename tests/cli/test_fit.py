"""`covfuse fit` argument handling: configs, overrides, --print_config, unknown keys, bad values."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from covfuse.cli.main import main as covfuse
from covfuse.training import config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_print_config_shows_the_resolved_config(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  covariates: [Young]\nmodel:\n  fusion: concat\n")
    with pytest.raises(SystemExit) as exc:
        covfuse(["fit", "--config", str(f), "--optim.lr", "1e-4", "--name", "x", "--print_config"])
    assert exc.value.code == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["name"] == "x" and values["optim"]["lr"] == 1e-4
    assert values["model"]["fusion"] == "concat" and values["data"]["covariates"] == ["Young"]
    assert values["trainer"]["max_epochs"] == 1  # defaults are shown too


def test_later_configs_and_flags_override_earlier_ones():
    cfg, flags = config.parse(["--config", str(CONFIGS / "research/baseline.yaml"),
                               "--config", str(CONFIGS / "research/hybrid.yaml"),
                               "--data.covariates", "[Smiling,Young,High_Cheekbones]",
                               "--model.hybrid_layers", "[features.40]", "--optim.lr", "1e-3"])
    assert cfg.model.backbone == "vgg16_bn" and cfg.model.head == "two-class" and cfg.model.weights == "imagenet"
    assert cfg.model.fusion == "hybrid" and cfg.model.hybrid_layers == ["features.40"]
    assert cfg.data.covariates == ["Smiling", "Young", "High_Cheekbones"] and cfg.optim.lr == 1e-3
    assert cfg.name == "hybrid-male-first" and flags == {}


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")))
def test_shipped_configs_parse(path, tmp_path):
    values = yaml.safe_load((CONFIGS / path).read_text())
    if "sweep" in values:  # a study file: its `sweep:` section is for `covfuse sweep`, the rest is a run config
        values.pop("sweep")
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
        path = tmp_path / "run.yaml"
    cfg = config.load(CONFIGS / path)
    assert cfg.model.fusion and cfg.data.covariates


def test_resolved_config_round_trips(tmp_path):
    cfg, _ = config.parse(["--config", str(CONFIGS / "demo.yaml"), "--trainer.devices", "[0,1]"])
    (tmp_path / "c.yaml").write_text(config.dump(cfg))
    assert config.load(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("args,message", [
    (["--optim.lrr", "1"], "optim.lrr"),
    (["--model.head", "three"], "model.head"),
    (["--trainer.max_epochs", "many"], "max_epochs"),
    (["--config", "/nonexistent/c.yaml"], "config file not found"),
    (["--data.batch-size", "0"], "data.batch_size must be at least 1"),  # dashes accepted: one flag spelling
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert covfuse(["fit", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("covfuse fit: error:")


def test_unknown_key_in_a_config_file_is_an_error(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  learning_rate: 0.1\n")
    assert covfuse(["fit", "--config", str(f)]) == 2
    assert f"{f}: unknown config key optim.learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["Young,Male", "[Young,Male]", "[Young, Male]", "Young, Male"])
def test_one_list_syntax(spelling):
    cfg, _ = config.parse(["--data.covariates", spelling])
    assert cfg.data.covariates == ["Young", "Male"]


def test_list_syntax_in_a_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  covariates: Young,Male\n")
    assert config.load(tmp_path / "c.yaml").data.covariates == ["Young", "Male"]


def test_missing_data_root_and_bad_run_name(tmp_path, capsys):
    assert covfuse(["fit", "--runs_dir", str(tmp_path)]) == 2
    assert "data.root" in capsys.readouterr().err
    assert covfuse(["fit", "--runs_dir", str(tmp_path), "--name", "../escape"]) == 2
    assert "plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path.parent / "escape").exists()


def test_relative_root_cache_is_built_once_for_fit_test_and_explain(tmp_path, monkeypatch, caplog, capsys):
    """A fit with a relative data.root builds the image cache; `test` and `explain` of that run use it as it
    is (same file, same mtime, no "ignoring" line), and the manifest named by its absolute path finds it too."""
    import logging

    from covfuse.data.cache import open_cache
    from covfuse.data.readers import read_table
    from covfuse.data.twins.faces import write_synth

    write_synth(tmp_path / "twin", n=40, seed=1, image_size=(16, 16), format="manifest", progress=False)
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "--data.target", "Attractive", "--data.covariates", "Young,Male", "--data.image_size", "16",
           "--data.batch_size", "8", "--data.cache", "build", "--trainer.max_epochs", "1", "--bootstrap", "0",
           "--trainer.accelerator", "cpu", "--trainer.progress", "none", "--trainer.summary", "false"]
    caplog.set_level(logging.INFO)
    assert covfuse([*fit, "--data.root", "twin/manifest.csv", "--name", "rel"]) == 0
    built = sorted((tmp_path / "twin/.covfuse-cache").glob("*.u8"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert covfuse(["test", "runs/rel"]) == 0
    assert covfuse(["explain", "rel", "--examples", "2", "--n-boot", "20", "--steps", "2", "--mass-images", "8"]) == 0
    assert open_cache(read_table(tmp_path / "twin/manifest.csv"), 16).path == built[0]
    assert sorted((tmp_path / "twin/.covfuse-cache").glob("*.u8")) == built
    assert built[0].stat().st_mtime_ns == stamp
    said = caplog.text + "".join(capsys.readouterr())
    assert "ignoring" not in said
    assert said.count("using image cache") >= 3  # test, explain and the absolute path each opened it
