"""DAFT, the dynamic affine feature map transform (Pölsterl et al., MICCAI 2021).

Scale and shift for each channel are predicted from the globally average-pooled feature map
concatenated with the covariates, through a bottleneck MLP (Linear, ReLU, Linear), then applied as
in FiLM. The layer's own bottleneck width is int((C + K) / reduction) for the C channels it
transforms; DAFT's code uses int((4·n_basefilters + K) / 7), where 4·n_basefilters is the channels
*entering* its last block (half the C it transforms there), and the model builder passes that width
as ``hidden`` (``daft_hidden: daft``). The paper predicts the scale directly; we predict ``scale = 1 + delta`` with a zero last layer, so a
fresh DAFT block is exactly the identity and the model starts as its image-only form. DAFT's own
scripts (``--film_location 3``) place it inside the last residual block, after conv1 and a BatchNorm
and before the ReLU; :class:`DAFTAfter` puts it behind any module (that BatchNorm, a stage, a
pooling layer) of an unmodified network, reading covariates from the context.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from covfuse.layers.context import current_covariates, layer_covariates
from covfuse.layers.film import film, zero_last_linear
from covfuse.layers.helpers import check_init


def daft(x: Tensor, covariates: Tensor, mlp: nn.Module, offset: float = 1.0) -> Tensor:
    """Apply DAFT to ``x`` (N, C, *spatial): ``mlp([mean(x) ⊕ covariates])`` gives (delta-scale, shift), each (N, C);
    the scale is ``offset + delta`` (``offset=0``: the reference's scale, predicted directly)."""
    pooled = x.flatten(2).mean(dim=2) if x.dim() > 2 else x
    weight_dtype = next(mlp.parameters()).dtype
    delta_scale, shift = mlp(torch.cat([pooled.to(weight_dtype), covariates.to(weight_dtype)], dim=1)).chunk(2, dim=1)
    return film(x, offset + delta_scale, shift)


def bottleneck_width(num_channels: int, num_covariates: int, reduction: float) -> int:
    """The DAFT MLP's hidden width when ``hidden`` is not given: int((C + K) / reduction), at least 1."""
    if reduction <= 0:
        raise ValueError(f"reduction must be > 0, got {reduction}")
    return max(1, int((num_channels + num_covariates) / reduction))


class DAFT(nn.Module):
    """DAFT block (Pölsterl et al. 2021): ``(1 + delta(x, z)) * x + shift(x, z)`` per channel.

    ``forward(x, covariates=None)``: ``x`` (N, C, *spatial), 1D/2D/3D alike; covariates (N, K),
    read from the context when omitted. Identity at initialisation (``init="identity"``); ``hidden``
    overrides the bottleneck width (DAFT's training code: (4 n_basefilters + K) / 7, the channels
    entering its last block); ``bias=False``: bias-free Linears as DAFT's ``DAFTBlock``;
    ``init="reference"``: PyTorch's default init and the scale predicted directly.
    """

    def __init__(
        self,
        num_channels: int,
        num_covariates: int,
        reduction: float = 7.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        hidden: int | None = None,
        bias: bool = True,
        init: str = "identity",
    ) -> None:
        super().__init__()
        if num_channels < 1 or num_covariates < 1:
            raise ValueError(f"num_channels and num_covariates must be >= 1, got {num_channels} and {num_covariates}")
        self.num_channels, self.num_covariates, self.reduction = num_channels, num_covariates, reduction
        self.offset = check_init(init)
        hidden = bottleneck_width(num_channels, num_covariates, reduction) if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        factory = {"device": device, "dtype": dtype}
        self.mlp = nn.Sequential(
            nn.Linear(num_channels + num_covariates, hidden, bias=bias, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2 * num_channels, bias=bias, **factory),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init; with ``init="identity"`` the last layer zero, so scale = 1 and shift = 0."""
        self.mlp[0].reset_parameters()
        self.mlp[2].reset_parameters()
        if self.offset:
            zero_last_linear(self.mlp)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"DAFT expects input (N, {self.num_channels}, ...), got {tuple(x.shape)}")
        covariates = layer_covariates(covariates, "DAFT", x, self.num_covariates)
        return daft(x, covariates, self.mlp, self.offset)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_covariates={self.num_covariates}, reduction={self.reduction}"


class DAFTAfter(nn.Module):
    """``module`` (e.g. a ResNet stage) followed by :class:`DAFT` with the context's covariates.

    A drop-in replacement for ``module`` inside an unmodified network; its parameters move one level
    down in the state dict (``layer3.0.conv1.weight`` becomes ``layer3.module.0.conv1.weight``).
    """

    def __init__(self, module: nn.Module, num_channels: int, num_covariates: int, reduction: float = 7.0,
                 **options) -> None:
        super().__init__()
        self.module = module
        self.daft = DAFT(num_channels, num_covariates, reduction, **options)

    def forward(self, x: Tensor) -> Tensor:
        return self.daft(self.module(x), current_covariates("DAFTAfter"))
