"""3D backbones: every fusion runs on them, and conditioning starts as the image-only function."""
from __future__ import annotations

import pytest
import torch

from covfuse.models import build
from covfuse.models.volumetric import space_to_depth

K = 3


@pytest.mark.parametrize("fusion", ["film", "daft", "hybrid"])
def test_fusions_on_a_monai_resnet_start_as_the_image_only_function(fusion, small_monai):
    torch.manual_seed(0)
    base = build("monai-resnet10", "image-only", K).eval()
    torch.manual_seed(0)  # same backbone weights: conditioning is added after the backbone is drawn
    fused = build("monai-resnet10", fusion, K, hybrid_layers=[0, 4, -1]).eval()  # stem, a middle and the last conv
    assert fused.conditioned, "no conditioning layer was inserted"
    x, s = torch.randn(2, 1, 16, 16, 16), torch.randn(2, K) * 3
    with torch.no_grad():
        torch.testing.assert_close(fused(x, s), base(x), rtol=1e-5, atol=1e-5)
        # and the covariates do reach the conditioning layers once their weights move
        for p in fused.parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(fused(x, s), fused(x, torch.zeros_like(s)))


def test_daft_sits_in_the_last_block_after_conv1_bn_and_hybrid_takes_conv3d_by_name():
    daft = build("resnet3d-compact", "daft", K)  # DAFT's scripts: --film_location 3
    assert daft.conditioned == {"layer4.bn1.daft": "daft"}
    hybrid = build("resnet3d-compact", "hybrid", K, hybrid_layers=["layer2.conv1", -1])
    assert set(hybrid.conditioned) == {"layer2.conv1", "layer4.downsample.0"}


@pytest.mark.parametrize("fusion", ["image-only", "covariates-only", "concat", "film", "daft", "hybrid"])
def test_every_fusion_trains_on_the_compact_resnet(fusion):
    torch.manual_seed(0)
    model = build("resnet3d-compact", fusion, K)
    x, s, y = torch.randn(4, 1, 16, 16, 16), torch.randn(4, K), torch.tensor([0.0, 1.0, 1.0, 0.0])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, s), y)
    loss.backward()
    assert model(x, s).shape == (4,)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_the_stem_equals_a_strided_convolution():
    """space-to-depth + 1x1x1 conv is the 4x4x4 stride-4 convolution it stands for."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 4, 4, stride=4, bias=False)
    pointwise = torch.nn.Conv3d(64, 4, 1, bias=False)
    with torch.no_grad():  # the same weights, laid out as space_to_depth orders the voxels
        pointwise.weight.copy_(conv.weight.reshape(4, 64, 1, 1, 1))
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(pointwise(space_to_depth(x, 4)), conv(x), rtol=1e-5, atol=1e-5)


def test_describe_draws_3d_models(tmp_path, capsys):
    from covfuse.cli.main import main as covfuse

    diagram = tmp_path / "d.png"
    args = ["describe", "--backbone", "resnet3d-compact", "--fusion", "hybrid", "--num-covariates", "3",
            "--hybrid-layers", "first", "--input-size", "16", "--diagram", str(diagram)]
    assert covfuse(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "conv1" in out and "4x4x4x4" in out and "hybrid" in out  # (C, D, H, W) after the stride-4 stem
    assert diagram.stat().st_size > 0
