"""`hybrid_layers: last` on ResNets is the last spatial (3x3) conv of the last block, never a 1x1
shortcut or bottleneck projection that comes later in definition order; `describe` says which."""
from __future__ import annotations

import pytest
import torch.nn as nn

from covfuse.cli.main import main as covfuse
from covfuse.models import build


def _hybrid(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__.startswith("HybridConv")]


@pytest.mark.parametrize("backbone, expected", [
    ("resnet18", "network.layer4.1.conv2"),
    ("resnet50", "network.layer4.2.conv2"),  # bottleneck: conv3 (1x1) comes after it
    ("resnet3d-compact", "network.layer4.conv2"),  # its shortcut was picked before
    ("monai-resnet10", "network.layer4.0.conv2"),
])
def test_last_is_the_last_spatial_conv(backbone, expected):
    plain = build(backbone, "image-only", 2)
    convs = [(n, m) for n, m in plain.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    spatial = [n for n, m in convs if max(m.kernel_size) > 1]
    assert spatial[-1] == expected  # computed here from the plain model
    assert _hybrid(build(backbone, "hybrid", 2, hybrid_layers="last")) == [expected]
    assert _hybrid(build(backbone, "hybrid", 2, hybrid_layers=[expected.removeprefix("network.")])) == [expected]


def test_describe_names_the_hybrid_conv_and_its_kernel(capsys):
    assert covfuse(["describe", "--backbone", "resnet3d-compact", "--fusion", "hybrid", "--hybrid_layers", "last",
                    "--input_size", "16"]) == 0
    assert "hybrid convs (last): network.layer4.conv2 (3x3x3)" in capsys.readouterr().out
