"""The literature's methods in the model builder: image-only at init on every backbone family, every head,
the reference's placements, rebuilding from a config, and tiny fits on the 2D and 3D twins."""
from __future__ import annotations

import json

import pytest
import torch

from covfuse.cli.main import main as covfuse
from covfuse.data.twins.faces import write_synth
from covfuse.models import build, build_from_config

METHODS = ["hyper", "mlpcatmlp", "duanmu", "tab-attention", "cond-norm"]
K = 3


def inputs(backbone: str, n: int = 4):
    shape = (1, 16, 16, 16) if backbone in ("resnet3d-compact", "monai-resnet10") else (3, 32, 32)
    return torch.randn(n, *shape)


@pytest.mark.parametrize("backbone", ["vgg-mini", "resnet18", "resnet3d-compact", "monai-resnet10"])
@pytest.mark.parametrize("method", METHODS)
def test_method_starts_as_the_image_only_model_and_then_uses_covariates(backbone, method, small_monai):
    torch.manual_seed(3)
    reference = build(backbone, "image-only", 0).eval()
    torch.manual_seed(3)
    model = build(backbone, method, K).eval()
    assert set(model.conditioned.values()) == {method}
    x = inputs(backbone)
    with torch.no_grad():
        expected = reference(x)
        for z in (torch.zeros(4, K), torch.randn(4, K) * 5, torch.tensor([[1.0, 0, 1]] * 4)):
            torch.testing.assert_close(model(x, z), expected, rtol=1e-5, atol=1e-5)
        backbone_names = set(reference.state_dict())
        for name, p in model.named_parameters():  # move only what the method added
            if name not in backbone_names:
                p.add_(0.3 * torch.randn_like(p))
        z1, z2 = torch.tensor([[1.0, 0, 1]] * 4), torch.tensor([[0.0, 1, 0]] * 4)
        assert (model(x, z1) - model(x, z2)).abs().max() > 1e-4


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head, classes, shape", [("binary", None, (4,)), ("two-class", None, (4, 2)),
                                                  ("multiclass", 4, (4, 4)), ("regression", None, (4,))])
def test_method_works_with_every_head(method, head, classes, shape):
    torch.manual_seed(0)
    model = build("vgg-mini", method, K, head=head, num_classes=classes)
    out = model(inputs("vgg-mini"), torch.randn(4, K))
    assert out.shape == shape
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_default_placements_are_the_references():
    # HyperFusion: the projection shortcut of the last residual block; VGGs have none: the last conv
    assert build("resnet18", "hyper", 1).config["hyper_layers"] == ["layer4.0.downsample.0"]
    assert build("resnet3d-compact", "hyper", 1).config["hyper_layers"] == ["layer4.downsample.0"]
    assert build("vgg-mini", "hyper", 1).config["hyper_layers"] == ["features.12"]
    # Tab-Attention: after conv1-BN(-ReLU) of every residual block
    assert build("resnet18", "tab-attention", 1).config["tab_attention_layers"] == [
        f"layer{s}.{b}.bn1" for s in range(1, 5) for b in (0, 1)]
    # de Vries et al.: every BatchNorm
    assert len(build("resnet18", "cond-norm", 1).config["cond_norm_layers"]) == 20
    # Duanmu (DAFT's InteractiveHNN): a factor in front of each of the four stages
    assert sorted(build("resnet3d-compact", "duanmu", 1).conditioned) == [f"layer{s}.factor" for s in range(1, 5)]
    # DAFT's mlpcatmlp: the head
    assert build("resnet18", "mlpcatmlp", 1).conditioned == {"fc": "mlpcatmlp"}


def test_placements_by_option_and_rebuild_from_config():
    model = build("resnet18", "hyper", 2, hyper_layers="layer1.0.conv1,-1", hyper_depth=2, hyper_width=4)
    assert model.config["hyper_layers"] == ["layer1.0.conv1", "layer4.1.conv2"]
    for m, kwargs in (("hyper", {}), ("tab-attention", {"tab_attention_layers": "first"}),
                      ("cond-norm", {"cond_norm_layers": [0, -1], "cond_norm_hidden": None}), ("duanmu", {}),
                      ("mlpcatmlp", {"mlpcat_hidden": 3})):
        model = build("vgg-mini", m, 2, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        rebuilt = build_from_config(model.config)
        rebuilt.load_state_dict(model.state_dict())
        model.eval(), rebuilt.eval()
        x, z = torch.randn(2, 3, 32, 32), torch.randn(2, 2)
        torch.testing.assert_close(model(x, z), rebuilt(x, z))


@pytest.fixture(scope="module")
def twin2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin2d") / "synth"
    write_synth(out, n=96, seed=0, effect="planted", image_size=(44, 54), progress=False)
    return out / "celeba"


@pytest.fixture(scope="module")
def twin3d(tmp_path_factory):
    out = tmp_path_factory.mktemp("twin3d") / "t"
    assert covfuse(["data", "synth3d", str(out), "--n", "16", "--size", "16", "--seed", "1"]) == 0
    return out / "manifest.csv"


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_on_both_twins(method, twin2d, twin3d, tmp_path, capsys):
    from pathlib import Path

    runs = tmp_path / "runs"
    common = ["--trainer.max_epochs", "1", "--trainer.summary", "false", "--trainer.progress_every", "0",
              "--bootstrap", "20", "--runs_dir", str(runs), "--model.fusion", method]
    args2d = ["fit", "--data.root", str(twin2d), "--data.image_size", "32", "--data.covariates", "[Young,Male]",
              "--data.batch_size", "16", "--name", "img", *common]
    volumes = Path(__file__).resolve().parents[2] / "configs" / "volumes" / "demo.yaml"
    args3d = ["fit", "--config", str(volumes), "--data.root", str(twin3d), "--data.image_size", "16",
              "--data.batch_size", "4", "--data.cache", "off", "--name", "vol", *common]
    for args, name in ((args2d, "img"), (args3d, "vol")):
        assert covfuse(args) == 0, capsys.readouterr().err
        metrics = json.loads((runs / name / "metrics.json").read_text())
        assert metrics["test"]["count"] > 0 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_describe_draws_each_method_and_counts_what_it_adds(method, tmp_path, capsys):
    from covfuse.models import describe as d

    model, plain = build("resnet3d-compact", method, K), build("resnet3d-compact", "image-only", K)
    desc = d.describe(model, input_size=16)
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    # everything the method adds depends on the covariates, nothing else does; but hyper generates a bias
    # where the conv had none, as the reference does: its constant part b_0 (zero at start) is new too
    constant = sum(m.bias.numel() for m in model.modules() if type(m).__name__ == "HyperConv3d")
    assert desc.covariate == added - constant > 0
    assert f"({method})" in d.format_table(desc)
    diagram = tmp_path / "d.png"
    args = ["describe", "--backbone", "vgg-mini", "--fusion", method, "--num-covariates", "2", "--diagram", str(diagram)]
    assert covfuse(args) == 0, capsys.readouterr().err
    assert method in capsys.readouterr().out and diagram.stat().st_size > 0


def test_describe_lists_duanmus_factor_before_the_stage_it_gates():
    from covfuse.models import describe as d

    table = d.format_table(d.describe(build("resnet3d-compact", "duanmu", K), input_size=16))
    names = [line.split()[0] for line in table.splitlines() if line.startswith("layer")]
    for stage in ("layer1", "layer2", "layer3", "layer4"):  # data-flow order: the factor gates the stage's input
        assert names.index(f"{stage}.factor") < names.index(f"{stage}.module.conv1")


@pytest.mark.parametrize("method", ["film", "daft", "hyper", "tab-attention"])
def test_a_config_saved_before_the_reference_defaults_rebuilds_its_own_model(method):
    # a checkpoint's config from before issue 26 lacks the new keys: it must rebuild the model it was saved from
    old = build("vgg-mini", method, K, film_bias=True, daft_bias=True, daft_hidden=None, hyper_embedding="relu",
                hyper_bias=False, tab_attention_relu=False, film_hidden=None)
    config = {k: v for k, v in old.config.items()
              if k not in ("fusion_init", "film_bias", "daft_bias", "daft_hidden", "hyper_embedding", "hyper_bias",
                           "tab_attention_relu")}
    rebuilt = build_from_config(config)
    rebuilt.load_state_dict(old.state_dict())  # strict: the same parameters, the same shapes
    assert all(m.relu is False for m in rebuilt.modules() if type(m).__name__ == "TabAttentionAfter")
