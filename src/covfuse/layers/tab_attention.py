"""TabAttention (Grzeszczyk et al., MICCAI 2023): CBAM channel and spatial attention conditioned on tabular data.

Channel gate: ``a_c = mlp(avgpool(x)) + mlp(maxpool(x)) + mlp(t_c(z))`` with one shared MLP
(C -> C/r -> C) and a tabular embedding t_c (K -> C/r -> C); ``x1 = x * g(a_c)``. Spatial gate:
``a_s = BN(conv_7([max_c(x1), mean_c(x1), t_s(z)]))`` with t_s (K -> P/2 -> P) reshaped to a map;
``out = x1 * g(a_s)``. 1D, 2D and 3D; on volumes the spatial gate works slice by slice along the
first spatial axis (a (1, 7, 7) kernel and one 2D tabular map for every slice), as the reference
treats a volume's depth as its video frames. Placement (:class:`TabAttentionAfter`): after a
block's conv1-BN-ReLU, the reference's place, so the gates see post-ReLU features.

Where covfuse differs from the reference (SanoScience/Tab-Attention, ``src/models/tabattention.py``,
``src/models/resnet_tabattention.py``):
- the gate is ``g = 2 * sigmoid`` and the shared MLP's last layer and the spatial BatchNorm's scale
  and shift start at zero, so both gates start at exactly 1 and a model starts as its image-only
  form; the reference's ``sigmoid`` halves every feature at initialisation and its network
  initialises every Linear N(0, 0.01), bias 0 (``init="reference"``: that init, ``gain=1``);
- the tabular spatial map is predicted on a fixed ``grid`` (P = grid^2 positions, default 7, the
  reference's map in its last stage; 1D: grid) and resized to the feature map (bilinear; 1D: linear); the
  reference predicts every position of its fixed input size, so its layer works at one input size
  only and its parameter count grows with the resolution. On a grid-sized map both are the same;
- the reduced width is at least 1 (the reference's C // 16 is 0 for fewer than 16 channels);
- volumes: the reference runs its 2D gates frame by frame and adds a temporal self-attention gate
  across frames; here the channel gate pools the whole volume (one gate per sample, like every
  other method here), the spatial gate is the reference's per-slice one, and there is no
  temporal gate (a video-specific part with no counterpart in a 3D CNN on MRI). The reference's
  ``tab.repeat(f, 1, 1)`` gives frame j of sample i the covariates of sample (i*f + j) mod b;
  covfuse gives every slice its own sample's covariates;
- the channel and spatial max-pools are taken with ``max`` (index-based backward, like the
  reference's ``max_pool2d``), not ``amax``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from covfuse.layers.context import current_covariates, layer_covariates
from covfuse.layers.helpers import check_init

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MODE = {1: "linear", 2: "bilinear"}  # the tabular map is 1D or 2D


def _mlp(n_in: int, hidden: int, n_out: int, **factory) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden, **factory), nn.ReLU(), nn.Linear(hidden, n_out, **factory))


class TabAttention(nn.Module):
    """Channel then spatial attention on ``x`` (N, C, *spatial), both conditioned on covariates (N, K)."""

    def __init__(self, num_channels: int, num_covariates: int, dims: int = 2, reduction: int = 16, grid: int = 7,
                 kernel_size: int = 7, gain: float | None = None, init: str = "identity",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_channels < 1 or num_covariates < 1 or dims not in _CONV or grid < 1:
            raise ValueError(f"need num_channels, num_covariates, grid >= 1 and dims in 1..3, got "
                             f"{num_channels}, {num_covariates}, {grid}, {dims}")
        check_init(init)
        gain = (1.0 if init == "reference" else 2.0) if gain is None else gain  # None: the init's own gate
        factory = {"device": device, "dtype": dtype}
        self.num_channels, self.num_covariates, self.dims, self.grid, self.gain = num_channels, num_covariates, dims, grid, gain
        hidden = max(1, num_channels // reduction)
        self.map_dims = min(dims, 2)  # the tabular map and the spatial kernel are 2D on volumes (per slice)
        positions = grid ** self.map_dims
        self.mlp = _mlp(num_channels, hidden, num_channels, **factory)               # shared by avg, max and tab
        self.tab_channel = _mlp(num_covariates, hidden, num_channels, **factory)
        self.tab_spatial = _mlp(num_covariates, max(1, positions // 2), positions, **factory)
        kernel = (kernel_size,) * dims if dims < 3 else (1, kernel_size, kernel_size)
        self.spatial = _CONV[dims](3, 1, kernel, padding=tuple((k - 1) // 2 for k in kernel), bias=False, **factory)
        self.spatial_norm = _NORM[dims](1, momentum=0.01, **factory)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "identity") -> None:
        """``identity``: both gates start at 1; ``reference``: every Linear N(0, 0.01), bias 0, as the
        reference's ``_initialize_weights`` (its conv and BatchNorm keep PyTorch's init)."""
        self.spatial_norm.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if init == "reference":
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
        if init == "identity":
            for p in (self.mlp[2].weight, self.mlp[2].bias, self.spatial_norm.weight, self.spatial_norm.bias):
                nn.init.zeros_(p)

    def tab_map(self, covariates: Tensor, size: tuple[int, ...]) -> Tensor:
        """The tabular spatial map (N, 1, *size): predicted on the grid, resized to ``size`` (on volumes
        a 2D map, the same for every slice)."""
        plane = tuple(size)[-self.map_dims:]
        t = self.tab_spatial(covariates).view(-1, 1, *(self.grid,) * self.map_dims)
        if plane != tuple(t.shape[2:]):
            t = F.interpolate(t, size=plane, mode=_MODE[self.map_dims], align_corners=False)
        return t.unsqueeze(2).expand(-1, -1, size[0], *plane) if self.dims == 3 else t

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"TabAttention expects input (N, {self.num_channels}, {', '.join('*' * self.dims)}), got {tuple(x.shape)}")
        z = layer_covariates(covariates, "TabAttention", x, self.num_covariates).to(self.mlp[0].weight.dtype)
        x1 = x * self.channel_gate(x, z).view(*x.shape[:2], *(1,) * self.dims)
        return x1 * self.spatial_gate(x1, z)

    def channel_gate(self, x: Tensor, z: Tensor) -> Tensor:
        """(N, C): ``g(mlp(avg) + mlp(max) + mlp(t_c(z)))``."""
        flat = x.flatten(2)
        # sum * (1/n) on the small pooled tensor, not mean: mean's backward divides a full-size tensor
        avg = flat.sum(2) * (1.0 / flat.shape[2])
        pooled = torch.stack([avg, flat.max(2).values, self.tab_channel(z)])  # (3, N, C): one MLP call
        return self.gain * torch.sigmoid(self.mlp(pooled).sum(0))

    def spatial_gate(self, x1: Tensor, z: Tensor) -> Tensor:
        """(N, 1, *spatial): ``g(BN(conv([max_c, mean_c, t_s(z)])))``."""
        mean = x1.sum(1, keepdim=True) * (1.0 / x1.shape[1])  # as above: the division on the (N, 1, ...) map
        maps = torch.cat([x1.max(1, keepdim=True).values, mean, self.tab_map(z, x1.shape[2:])], dim=1)
        return self.gain * torch.sigmoid(self.spatial_norm(self.spatial(maps)))

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_covariates={self.num_covariates}, dims={self.dims}, grid={self.grid}, gain={self.gain}"


class TabAttentionAfter(nn.Module):
    """``module`` followed by :class:`TabAttention` with the context's covariates; a drop-in for ``module``.

    ``relu=True`` (the reference's place, after conv1-BN-ReLU): wrapping a block's first norm, it
    computes ``TabAttention(ReLU(norm(x)))``; the block's own ReLU that follows then leaves the
    non-negative result unchanged (gates are positive), so the gates see post-ReLU features exactly
    as in the reference. ``relu=False`` gates the norm's output (pre-ReLU features).
    """

    def __init__(self, module: nn.Module, num_channels: int, num_covariates: int, dims: int = 2, relu: bool = True,
                 **options) -> None:
        super().__init__()
        self.module, self.relu = module, relu
        self.attention = TabAttention(num_channels, num_covariates, dims, **options)

    def forward(self, x: Tensor) -> Tensor:
        y = self.module(x)
        # In place, as the block's own ReLU(inplace=True) would do on the norm's output.
        return self.attention(torch.relu_(y) if self.relu else y, current_covariates("TabAttentionAfter"))

    def extra_repr(self) -> str:
        return f"relu={self.relu}"
