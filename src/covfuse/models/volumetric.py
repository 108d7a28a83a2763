"""3D backbones for volumes: MONAI's 3D ResNets and a compact DAFT-sized 3D ResNet.

Both use torchvision's ResNet module names (``conv1, bn1, ..., layer1..layer4, avgpool, fc``),
so every fusion method, placement rule and regime that works on a 2D ResNet works here: DAFT's and
FiLM's default place is after conv1-BN of the last stage (the compact net's ``layer4.bn1``, where DAFT's
scripts put DAFT), hybrid convs take any ``Conv3d`` by name, index or first/last/all, FiLM goes behind
a ``BatchNorm3d``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

COMPACT_WIDTHS = (4, 8, 16, 32)
"""Base filters of the compact ResNet, as in DAFT's reference network (Pölsterl et al. 2021)."""


class BasicBlock3d(nn.Module):
    """Two 3x3x3 conv-BN layers with an identity (or 1x1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def space_to_depth(x: Tensor, factor: int = 2) -> Tensor:
    """(N, C, D, H, W) -> (N, C * f^3, D/f, H/f, W/f): each f^3 block of voxels becomes channels."""
    n, c, d, h, w = x.shape
    f = factor
    if d % f or h % f or w % f:
        raise ValueError(f"volume sides must be multiples of {f}, got {tuple(x.shape[2:])}")
    x = x.reshape(n, c, d // f, f, h // f, f, w // f, f).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(n, c * f ** 3, d // f, h // f, w // f)


class CompactResNet3d(nn.Module):
    """A small 3D ResNet: a stride-4 stem, four one-block stages, global pooling, fc.

    ``widths`` are the stages' channels (default 4-8-16-32, DAFT's size: about 0.06M parameters
    with one output). At 64^3 input the stages run at 16^3, 8^3, 4^3 and 2^3 voxels.

    The stem is a 4x4x4 stride-4 convolution written as space-to-depth followed by ``conv1``, a
    1x1x1 ``Conv3d`` (the same linear map). It replaces a strided 3x3x3 conv + max-pool: on CPUs,
    PyTorch's Conv3d weight gradient with a single input channel was measured 20-100x slower, and
    full-resolution BatchNorm/max-pool dominated the rest (docs/performance.md, Volumes).
    """

    def __init__(self, num_classes: int = 1000, widths: Sequence[int] = COMPACT_WIDTHS, in_channels: int = 1) -> None:
        super().__init__()
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be four positive channel counts, got {widths!r}")
        w = [int(v) for v in widths]
        self.stride = 4
        self.conv1 = nn.Conv3d(in_channels * self.stride ** 3, w[0], 1, bias=False)
        self.bn1 = nn.BatchNorm3d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock3d(w[0], w[0])
        self.layer2 = BasicBlock3d(w[0], w[1], stride=2)
        self.layer3 = BasicBlock3d(w[1], w[2], stride=2)
        self.layer4 = BasicBlock3d(w[2], w[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(space_to_depth(x, self.stride))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _monai_resnet(depth: int) -> nn.Module:
    from monai.networks.nets import resnet  # lazy: MONAI only for the monai-* backbones

    builder = getattr(resnet, f"resnet{depth}")
    return builder(spatial_dims=3, n_input_channels=1, num_classes=1000)


BUILDERS = {
    "resnet3d-compact": lambda: CompactResNet3d(),
    "resnet3d-compact-wide": lambda: CompactResNet3d(widths=(8, 16, 32, 64)),
    "monai-resnet10": lambda: _monai_resnet(10),
    "monai-resnet18": lambda: _monai_resnet(18),
    "monai-resnet34": lambda: _monai_resnet(34),
}


def instantiate_3d(name: str) -> nn.Module:
    """The named 3D backbone with random weights and a 1000-output ``fc`` (replaced by the task head)."""
    return BUILDERS[name]()
