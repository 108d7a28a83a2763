"""HybridConv1d/2d/3d: convolutions whose kernel is W_0 + sum_j s_ij W_j for each sample i.

The module owns the parameters and their initialisation; the arithmetic lives in
:mod:`covfuse.layers.hybrid_functional`. Constructor arguments follow ``nn.ConvNd``'s order with
``num_covariates`` after ``kernel_size`` (the layer contract in ARCHITECTURE.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from covfuse.layers.context import layer_covariates
from covfuse.layers.helpers import IntOrTuple, normalize_padding, to_ntuple
from covfuse.layers.hybrid_functional import BACKENDS, hybrid_conv

COVARIATE_INITS = ("zeros", "kaiming")


class _HybridConvNd(nn.Module):
    """Shared implementation; use :class:`HybridConv1d`, :class:`HybridConv2d` or :class:`HybridConv3d`."""

    _dims: int = 0
    _conv_type: type[nn.Module] = nn.Module

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        num_covariates: int,
        stride: IntOrTuple = 1,
        padding: IntOrTuple | str = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        backend: str = "auto",
        covariate_init: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n = self._dims
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        if num_covariates < 1:
            raise ValueError(f"num_covariates must be >= 1, got {num_covariates}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if covariate_init not in COVARIATE_INITS:
            raise ValueError(f"covariate_init must be one of {COVARIATE_INITS}, got {covariate_init!r}")
        self.in_channels, self.out_channels, self.num_covariates = in_channels, out_channels, num_covariates
        self.kernel_size = to_ntuple(kernel_size, n, "kernel_size")
        self.stride = to_ntuple(stride, n, "stride")
        self.padding = normalize_padding(padding, n, self.stride)
        self.dilation = to_ntuple(dilation, n, "dilation")
        self.groups, self.backend, self.covariate_init = groups, backend, covariate_init
        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.covariate_weight = nn.Parameter(torch.empty((num_covariates, *shape), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
            self.covariate_bias = nn.Parameter(torch.empty(num_covariates, out_channels, **factory))
        else:
            self.register_parameter("bias", None)
            self.register_parameter("covariate_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W_0 and b_0 as ``nn.ConvNd`` initialises them; covariate terms zero (or the same Kaiming init)."""
        fan_in = self.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        if self.covariate_init == "zeros":
            nn.init.zeros_(self.covariate_weight)
            if self.covariate_bias is not None:
                nn.init.zeros_(self.covariate_bias)
        else:
            for w in self.covariate_weight:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if self.covariate_bias is not None:
                nn.init.uniform_(self.covariate_bias, -bound, bound)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        """``covariates`` (N, K); when omitted, taken from the enclosing ``covfuse.convert`` call."""
        if x.dim() != self._dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (N, {self.in_channels}, {', '.join('*' * self._dims)}), "
                f"got {tuple(x.shape)}"
            )
        covariates = layer_covariates(covariates, type(self).__name__, x, self.num_covariates)
        return hybrid_conv(
            x, covariates, self.weight, self.covariate_weight, self.bias, self.covariate_bias,
            self.stride, self.padding, self.dilation, self.groups, self.backend,
        )

    @classmethod
    def from_conv(cls, conv: nn.Module, num_covariates: int, init: str = "zeros", backend: str = "auto"):
        """A hybrid conv whose W_0 and b_0 are exact copies of ``conv``'s; with ``init="zeros"`` it
        computes what ``conv`` computes, for any covariates."""
        if type(conv) is not cls._conv_type:
            raise TypeError(f"{cls.__name__}.from_conv expects an {cls._conv_type.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, num_covariates, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, backend, init,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        layer.weight.requires_grad_(conv.weight.requires_grad)
        return layer

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_covariates={self.num_covariates}, stride={self.stride}"
        )
        if self.padding != (0,) * self._dims:
            s += f", padding={self.padding}"
        if self.dilation != (1,) * self._dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s + f", backend={self.backend!r}"


class HybridConv1d(_HybridConvNd):
    """1D hybrid convolution (signals, sequences)."""

    _dims, _conv_type = 1, nn.Conv1d


class HybridConv2d(_HybridConvNd):
    """2D hybrid convolution (images)."""

    _dims, _conv_type = 2, nn.Conv2d


class HybridConv3d(_HybridConvNd):
    """3D hybrid convolution (volumes such as brain MRI)."""

    _dims, _conv_type = 3, nn.Conv3d


HYBRID_FOR_CONV: dict[type[nn.Module], type[_HybridConvNd]] = {
    nn.Conv1d: HybridConv1d, nn.Conv2d: HybridConv2d, nn.Conv3d: HybridConv3d,
}


def hybrid_layers(module: nn.Module) -> Sequence[tuple[str, _HybridConvNd]]:
    """(name, layer) for every hybrid conv inside ``module``."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _HybridConvNd)]
