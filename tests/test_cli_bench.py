"""`covfuse bench`: user errors exit 2 with one line; a tiny layer run writes the documented JSON record.
(Timings themselves are never asserted: benchmarks are not tests.)"""
from __future__ import annotations

import json

import pytest
import torch

from covfuse.cli.main import main as cli
from covfuse.layers import set_autotune


@pytest.fixture(autouse=True)
def restore_threads():
    """`covfuse bench` sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    set_autotune(None)


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
    assert set(row["ratio_to_plain"]) == {"expand", "grouped", "pattern", "auto", "reference"}
    assert all(r["min"] <= r["median"] <= r["max"] for r in row["ratio_to_plain"].values())
    assert row["auto_choice"] in {"expand", "grouped", "pattern", "reference"} and row["auto_how"] == "rule"
