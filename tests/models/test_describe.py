"""`covfuse describe`: the layer table against hand-computed shapes and counts, the JSON form, the diagram,
and the parameter table of docs/methods.md (regenerated here, so the document cannot drift from the code)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from PIL import Image

from covfuse.cli.main import main as cli
from covfuse.models import build
from covfuse.models.describe import describe

REPO = Path(__file__).resolve().parents[2]
# The command whose output docs/methods.md holds between its <!-- params:begin/end --> markers.
TABLE_COMMAND = "covfuse describe --parameter_table --backbone vgg-mini,resnet3d-compact,resnet18 --num_covariates 3"


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("features.", "classifier.", "avgpool"))}


def test_describe_vgg_mini_hybrid_table(capsys):
    assert cli(["describe", "--backbone", "vgg-mini", "--fusion", "hybrid", "--hybrid-layers", "features.0",
                "--num-covariates", "3"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # By hand: 64x64 input, 3x3 convs with padding 1 keep the size, each max-pool halves it.
    assert rows["features.0"] == ["features.0", "HybridConv2d", "16x64x64", f"{448 * 4:,}", "yes", "hybrid"]
    assert rows["features.3"][:3] == ["features.3", "MaxPool2d", "16x32x32"]
    assert rows["features.12"][:4] == ["features.12", "Conv2d", "128x8x8", "73,856"]
    assert rows["avgpool"][2] == "128x1x1"
    assert rows["classifier.3"][2] == "1"
    total = 97440 + 480 + 16512 + 129 + 448 * 3
    assert f"total {total:,}; trainable {total:,}; covariate-specific {448 * 3:,}" in out
    assert "conditioned layers: features.0 (hybrid)" in out
    assert "  features.0: auto -> pattern (binary covariates), unfold (continuous)" in out


def test_describe_research_placements_on_vgg16_bn_json(capsys):
    argv = ["describe", "--backbone", "vgg16_bn", "--fusion", "hybrid", "--hybrid-layers", "features.0,features.40",
            "--num-covariates", "3", "--input-size", "32", "--regime", "linear-probe", "--head", "two-class",
            "--format", "json"]
    assert cli(argv) == 0
    info = json.loads(capsys.readouterr().out)
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert [n for n, layer in layers.items() if layer["conditioning"] == "hybrid"] == ["features.0", "features.40"]
    assert layers["features.40"]["output"] == [512, 2, 2] and layers["features.43"]["output"] == [512, 1, 1]
    assert layers["avgpool"]["output"] == [512, 7, 7] and layers["classifier.6"]["output"] == [2]
    first, last = (3 * 9 * 64 + 64), (512 * 9 * 512 + 512)
    assert info["parameters"]["covariate"] == 3 * (first + last)
    assert info["parameters"]["trainable"] == 4 * (first + last) + 4096 * 2 + 2
    assert info["config"]["hybrid_layers"] == ["features.0", "features.40"]
    # What `auto` picks at batch 32 on this CPU, by the rule: binary K=3 -> 8 patterns -> pattern;
    # continuous -> im2col + batched GEMM at the 3-channel input, dense expand at 512 channels on 2x2 maps.
    assert info["hybrid_backends"] == {
        "features.0": {"backend": "auto", "binary": "pattern", "continuous": "unfold"},
        "features.40": {"backend": "auto", "binary": "pattern", "continuous": "expand"},
    }


def test_describe_film_and_daft_rows_and_frozen_flags(capsys):
    assert cli(["describe", "--backbone", "resnet18", "--fusion", "film+daft", "--num-covariates", "2",
                "--regime", "features-frozen", "--input-size", "64", "-o", "daft_layer=layer2"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isalpha() and len(line.split()) > 2}
    assert lines["layer4.0.bn1.film"][1:3] == ["FiLM", "512x2x2"] and lines["layer4.0.bn1.film"][-1] == "film"
    assert lines["layer2.daft"][1:3] == ["DAFT", "128x8x8"] and lines["layer2.daft"][-1] == "daft"
    assert lines["layer1.0.conv1"][-1] == "no" and lines["fc"][-1] == "yes"


def test_diagram_is_a_readable_png_and_not_overwritten(tmp_path, capsys):
    path = tmp_path / "arch.png"
    argv = ["describe", "--backbone", "resnet18", "--fusion", "hybrid+concat", "--hybrid-layers", "0,layer3.0.conv2",
            "--num-covariates", "3", "--input-size", "64", "--diagram", str(path)]
    assert cli(argv) == 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 600
        pixels = image.convert("RGB").getcolors(1 << 20)
    assert any(abs(r - 0xF2) < 8 and abs(g - 0x8E) < 8 and abs(b - 0x2B) < 8 for _, (r, g, b) in pixels)  # hybrid orange
    capsys.readouterr()
    assert cli(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli([*argv, "--overwrite"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["arch.png"]  # no temporary files left behind


def test_diagram_of_an_image_only_model_has_no_legend_to_crash_on(tmp_path, capsys):
    path = tmp_path / "plain.png"  # no conditioned and no frozen layers: an empty legend
    assert cli(["describe", "--backbone", "vgg-mini", "--diagram", str(path)]) == 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
    assert [p.name for p in tmp_path.iterdir()] == ["plain.png"]


@pytest.mark.parametrize("argv, message", [
    (["--backbone", "vgg16bn"], "did you mean 'vgg16_bn'"),
    (["--backbone", "vgg-mini", "--fusion", "daft", "-o", "daft_reduce=2"], "did you mean 'daft_reduction'"),
    (["--backbone", "vgg-mini", "--input-size", "8"], "at least 16"),
    (["--backbone", "vgg-mini", "--diagram", "out.svg"], "png"),
    (["--backbone", "vgg-mini", "--bogus"], "unrecognized arguments: --bogus"),
    (["--backbone", "vgg-mini", "--update", "methods.md"], "add --parameter_table"),
    (["--backbone", "vgg-mini", "--parameter_table", "--format", "json", "--input_size", "32"],
     "leave out --input_size, --format"),
    (["--backbone", "vgg-mini,resnet19", "--parameter_table"], "did you mean 'resnet18'"),
    ([], "--backbone"),
])
def test_describe_user_errors(argv, message, capsys):
    assert cli(["describe", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_describe_does_not_change_the_model():
    model = build("vgg-mini", "film", 1).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    desc = describe(model, 32)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert desc.total == sum(p.numel() for p in model.parameters())


def test_methods_md_parameter_table_is_what_the_code_builds(tmp_path):
    doc = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    copy = tmp_path / "methods.md"
    copy.write_text(doc, encoding="utf-8")
    assert cli([*shlex.split(TABLE_COMMAND)[1:], "--update", str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == doc, (
        f"docs/methods.md's parameter table differs from the models the code builds; regenerate it from the "
        f"repository root with `{TABLE_COMMAND} --update docs/methods.md` and fix any prose that quotes it")


def _table(out: str) -> dict[str, list[str]]:
    return {cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (line.split("|") for line in out.splitlines() if line.startswith("| "))}


def test_parameter_table_counts_by_hand(capsys):
    assert cli(["describe", "--parameter_table", "--backbone", "vgg-mini,resnet3d-compact",
                "--fusion", "concat-2fc,hyper,film", "--num-covariates", "3"]) == 0
    rows = _table(capsys.readouterr().out)
    assert list(rows) == ["method", "image-only (its own total)", "concat-2fc", "hyper", "film"]
    assert rows["image-only (its own total)"][0] == f"{97440 + 480 + 16512 + 129:,}"  # vgg-mini, as in the layer table
    K, F, O = 3, 128, 1
    # concat-2fc's new head (F + K) -> 64 -> O replaces the image head F -> O; its covariate columns are K x 64.
    assert rows["concat-2fc"][0] == f"{(F + K + 1) * 64 + 65 * O - (F + 1) * O:,} ({K * 64:,})"
    # resnet3d-compact's last shortcut conv (16 -> 32, 1x1x1, no bias): E (|W| + O) generators, the embedding
    # Linear(K, E)-BatchNorm1d(E)-PReLU, and a new constant bias b_0 (O values) that is not covariate-specific.
    E, W, O = 8, 32 * 16, 32
    covariate = E * (W + O) + (K * E + E) + 2 * E + 1
    assert rows["hyper"][1] == f"{covariate + O:,} ({covariate:,})"
    # film: bias-free generator K -> int((C_in + K) / 7) -> 2C after layer4.bn1 (C_in 16, C 32); nothing in brackets.
    hidden = (16 + K) // 7
    assert rows["film"][1] == f"{K * hidden + hidden * 2 * 32:,}"


def test_parameter_table_update_needs_the_markers(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("no markers here\n")
    assert cli(["describe", "--parameter_table", "--backbone", "vgg-mini", "--fusion", "concat",
                "--update", str(path)]) == 2
    assert path.read_text() == "no markers here\n"
