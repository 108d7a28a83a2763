"""Duanmu et al. (MICCAI 2020) channel gating: covariates reweight the feature maps entering the stages.

A chain of linear maps turns the covariates into one per-channel factor per stage:
``a_1 = A_1 ReLU(A_0 z)``, ``a_s = A_s a_{s-1}`` (no biases), and the input of stage s is multiplied
by ``offset + a_s`` channel-wise. :class:`DuanmuAttention` holds the chain; :class:`DuanmuGate`
applies factor s to the input (or output) of one module of an unmodified network (the model builder
gates the input of every ResNet stage, and in VGGs the output of every stage but the last).

Where covfuse differs from the reference (ai-med/DAFT, ``InteractiveHNN`` in
``daft/networks/vol_networks.py``, which the DAFT paper uses as the Duanmu baseline): the reference
multiplies by ``a_s`` itself (``offset=0``), so its network is never the image-only one and starts
from near-zero features; covfuse multiplies by ``1 + a_s`` with ``A_1`` zero at initialisation, so
every factor starts at 1 and the model starts as its image-only form (``offset=0`` and
``init="reference"`` give the reference's function). Each gate computes the chain up to its own
stage on every call (a few tiny matmuls), so gates share nothing but the parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from covfuse.layers.context import layer_covariates
from covfuse.layers.helpers import check_init


class DuanmuAttention(nn.Module):
    """The attention chain: ``forward(covariates)`` -> one (N, C_s) factor per stage, ``offset + a_s``."""

    def __init__(self, num_covariates: int, channels: Sequence[int], hidden: int = 8, offset: float = 1.0,
                 init: str = "identity", device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if num_covariates < 1 or hidden < 1 or not channels or min(channels) < 1:
            raise ValueError(f"need num_covariates, hidden >= 1 and channels of positive ints, got "
                             f"{num_covariates}, {hidden}, {channels!r}")
        check_init(init)
        factory = {"device": device, "dtype": dtype}
        self.num_covariates, self.channels, self.hidden, self.offset = num_covariates, channels, hidden, offset
        self.base = nn.Linear(num_covariates, hidden, bias=False, **factory)
        self.maps = nn.ModuleList([nn.Linear(hidden, channels[0], bias=False, **factory)] +
                                  [nn.Linear(a, b, bias=False, **factory) for a, b in zip(channels, channels[1:])])
        if init == "identity":
            nn.init.zeros_(self.maps[0].weight)

    def forward(self, covariates: Tensor, upto: int | None = None) -> list[Tensor]:
        """Factors of stages 0..``upto`` (all when None)."""
        a = torch.relu(self.base(covariates.to(self.base.weight.dtype)))
        out = []
        for linear in self.maps[: None if upto is None else upto + 1]:
            a = linear(a)
            out.append(self.offset + a)
        return out

    def extra_repr(self) -> str:
        return f"num_covariates={self.num_covariates}, channels={self.channels}, hidden={self.hidden}, offset={self.offset}"


def channel_gate(x: Tensor, factor: Tensor) -> Tensor:
    """``x[n, c, ...] * factor[n, c]``."""
    if factor.shape != x.shape[:2]:
        raise ValueError(f"factor must have shape {tuple(x.shape[:2])}, got {tuple(factor.shape)}")
    return x * factor.view(*factor.shape, *(1,) * (x.dim() - 2)).to(x.dtype)


class DuanmuFactor(nn.Module):
    """Multiplies ``x`` (N, C_s, ...) by stage ``index``'s factor of a shared :class:`DuanmuAttention`.

    The factor of stage 0 owns the attention chain (its parameters live there in the state dict);
    the others hold an unregistered reference to the same object (fine under DDP and ``deepcopy``;
    ``nn.DataParallel`` replicas would reach stage 0's original parameters: use DDP).
    """

    def __init__(self, attention: DuanmuAttention, index: int) -> None:
        super().__init__()
        self.index = index
        if index == 0:
            self.attention = attention
        else:
            self.__dict__["_shared"] = attention  # not a submodule: registered once, at stage 0

    @property
    def chain(self) -> DuanmuAttention:
        return self.attention if self.index == 0 else self.__dict__["_shared"]

    def factor(self, covariates: Tensor) -> Tensor:
        """(N, C_index): ``offset + a_index``."""
        return self.chain(covariates, upto=self.index)[-1]

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        z = layer_covariates(covariates, "DuanmuFactor", x, self.chain.num_covariates)
        return channel_gate(x, self.factor(z))

    def extra_repr(self) -> str:
        return f"index={self.index}"


class DuanmuGate(nn.Module):
    """``module`` with a :class:`DuanmuFactor` applied to its input (``before=True``) or its output."""

    def __init__(self, module: nn.Module, attention: DuanmuAttention, index: int, before: bool = True) -> None:
        super().__init__()
        self.before = before
        # Registered in data-flow order, so describe and state dicts list the factor before the stage it gates.
        if before:
            self.factor = DuanmuFactor(attention, index)
            self.module = module
        else:
            self.module = module
            self.factor = DuanmuFactor(attention, index)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(self.factor(x)) if self.before else self.factor(self.module(x))

    def extra_repr(self) -> str:
        return f"before={self.before}"
