"""`covfuse bench`: user errors exit 2 with one line; a tiny layer run writes the documented JSON record.
(Timings themselves are never asserted: benchmarks are not tests.)"""
from __future__ import annotations

import json

import pytest
import torch

from covfuse.bench.timing import use_cpu_time
from covfuse.cli.main import main as cli
from covfuse.layers.autotune import set_autotune


@pytest.fixture(autouse=True)
def restore_threads():
    """`covfuse bench` sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    set_autotune(None)
    use_cpu_time(None)


def test_bad_options_are_one_line_user_errors(tmp_path, capsys):
    assert cli(["bench", "layers", "--nets", "alexnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown --nets entry 'alexnet'" in err
    existing = tmp_path / "bench.json"
    existing.write_text("{}")
    assert cli(["bench", "data", "--json", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "{}"
    assert cli(["bench", "everything"]) == 2


def test_tiny_layer_run_writes_the_record(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "layers", "--device", "cpu", "--nets", "vgg16", "--size", "8", "--batch", "4", "--rounds", "1",
            "--shapes", "64->64", "--kinds", "binary", "--k", "1", "--json", str(out)]
    assert cli(argv) == 0
    table = capsys.readouterr().out
    assert "| vgg16 64->64 k3x3 @8 | 4 |" in table
    record = json.loads(out.read_text())
    assert record["environment"]["torch_threads"] == 1 and "load_average" in record["environment"]
    (row,) = record["layers"]
    assert set(row["ratio_to_plain"]) == {"expand", "grouped", "pattern", "unfold", "auto", "reference"}  # no triton off CUDA
    assert all(r["min"] <= r["median"] <= r["max"] for r in row["ratio_to_plain"].values())
    assert row["auto_choice"] in {"expand", "grouped", "pattern", "reference"} and row["auto_how"] == "rule"
    assert row["best"] in row["ratio_to_plain"] and row["best"] != "auto"
    assert row["auto_over_best"]["min"] <= row["auto_over_best"]["median"] <= row["auto_over_best"]["max"]
    assert "| auto picks | best | auto/best |" in table


def test_tune_fills_this_machines_cache_at_the_training_thread_count(tmp_path, monkeypatch, capsys):
    """`--tune` measures `auto` anew for each shape at torch's default thread count (what training
    uses) and stores the choices; a later run reads them back as `cached`."""
    monkeypatch.setenv("COVFUSE_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(2)  # stands for the process's default here
    out = tmp_path / "bench.json"
    argv = ["bench", "layers", "--device", "cpu", "--nets", "vgg16", "--size", "8", "--batch", "4", "--rounds", "1",
            "--shapes", "64->64", "--kinds", "binary", "--k", "1", "--no-loop", "--tune", "--clock", "cpu", "--json", str(out)]
    assert cli(argv) == 0
    assert "CPU time (2 threads)" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["environment"]["torch_threads"] == 2 and record["environment"]["cpu_time"]
    assert record["layers"][0]["auto_how"] == "tuned"
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "autotune").glob("*.json")]
    assert entries and all(e["machine"]["threads"] == 2 for e in entries)
    set_autotune(None)
    again = [a for a in argv if a != "--tune"] + ["--autotune", "on", "--threads", "2", "--overwrite"]
    assert cli(again) == 0
    assert json.loads(out.read_text())["layers"][0]["auto_how"] == "cached"
    assert cli(["bench", "layers", "--tune", "--autotune", "off"]) == 2


def test_models_bench_channels_last_on_cpu_has_loop_rows(tmp_path, capsys):
    """The CUDA path's NHWC conversion, on a CPU: a hybrid model (5-D covariate weights) converts and
    steps, and the seed's per-sample loop in the same layers gets its own rows."""
    out = tmp_path / "models.json"
    variants = "image-only,hybrid all K=3,loop first K=3,loop all K=3"
    argv = ["bench", "models", "--device", "cpu", "--backbones", "vgg-mini", "--model-size", "16", "--model-batch", "4",
            "--rounds", "1", "--channels-last", "--variants", variants, "--json", str(out)]
    assert cli(argv) == 0
    assert "channels_last" in capsys.readouterr().out
    rows = json.loads(out.read_text())["models"]
    assert [r["variant"] for r in rows] == variants.split(",")
    assert all(r["channels_last"] and r["step_ms"] > 0 for r in rows)
    loop = {r["variant"]: r for r in rows if r["variant"].startswith("loop ")}
    assert set(loop) == {"loop first K=3", "loop all K=3"}
    assert all(r["ratio_to_image_only"]["min"] <= r["ratio_to_image_only"]["median"] for r in loop.values())


def test_models_bench_loop_rows_use_the_per_sample_loop(monkeypatch):
    """The loop rows run backend="reference" in every hybrid layer (checked on the built models)."""
    from covfuse.bench import models as bench_models

    seen = []
    real = bench_models.build

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        seen.append(model)
        return model

    monkeypatch.setattr(bench_models, "build", spy)
    bench_models.run(["vgg-mini"], 16, 2, "cpu", 1, autocast=False, channels_last=True,
                     variants=["image-only", "hybrid all K=3", "loop all K=3"], echo=lambda line: None)
    hybrid, loop = ([m.backend for _, m in bench_models.hybrid_layers(model)] for model in seen[1:])
    assert set(hybrid) == {"auto"} and set(loop) == {"reference"} and len(loop) == len(hybrid) > 1


def test_a_back_end_that_fails_is_a_note_not_a_crash(tmp_path, capsys, monkeypatch):
    """E.g. Triton that cannot build on a GPU: the layer bench reports it and measures the rest."""
    from covfuse.bench import layers as bench_layers

    monkeypatch.setattr(bench_layers, "available_backends", lambda dev: ("expand", "triton", "reference"))
    monkeypatch.delenv("TRITON_INTERPRET")  # triton cannot run on this CPU: its layer raises
    out = tmp_path / "bench.json"
    argv = ["bench", "layers", "--device", "cpu", "--nets", "vgg16", "--size", "8", "--batch", "4", "--rounds", "1",
            "--shapes", "64->64", "--kinds", "continuous", "--k", "1", "--json", str(out)]
    assert cli(argv) == 0
    assert "(triton failed at vgg16 64->64 k3x3 @8: RuntimeError" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["layers"]
    assert set(row["ratio_to_plain"]) == {"expand", "auto", "reference"} and "triton" in row["failed"]
