"""FiLM, feature-wise linear modulation (Perez et al., AAAI 2018): per-channel gamma(z) * F + beta(z).

gamma and beta are predicted from the covariates z by a linear map (or a small MLP). We predict
``gamma = 1 + delta`` and zero the generator's last layer, so a fresh FiLM layer is exactly the
identity and a model with FiLM inserted starts as the image-only model (the models contract).
:class:`FiLMAfter` places FiLM behind an existing module (usually a BatchNorm) of an unmodified
network, reading the covariates from :mod:`covfuse.layers.context`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from covfuse.layers.context import current_covariates, layer_covariates
from covfuse.layers.helpers import check_init


def film(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """``gamma[n, c] * x[n, c, ...] + beta[n, c]`` for ``x`` (N, C, *spatial) and gamma/beta (N, C)."""
    if gamma.shape != x.shape[:2] or beta.shape != x.shape[:2]:
        raise ValueError(f"gamma and beta must have shape {tuple(x.shape[:2])}, got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    view = (*x.shape[:2], *([1] * (x.dim() - 2)))
    return torch.addcmul(beta.view(view).to(x.dtype), gamma.view(view).to(x.dtype), x)


def affine_generator(in_features: int, num_channels: int, hidden: int | None, bias: bool = True, **factory) -> nn.Module:
    """Linear (``hidden=None``) or Linear-ReLU-Linear map to 2 * num_channels values (delta-gamma, beta);
    ``bias=False``: bias-free Linears, as DAFT's ``FilmBlock`` / ``DAFTBlock`` auxiliary nets."""
    if hidden is None:
        return nn.Linear(in_features, 2 * num_channels, bias=bias, **factory)
    if hidden < 1:
        raise ValueError(f"hidden must be a positive int or None, got {hidden}")
    return nn.Sequential(
        nn.Linear(in_features, hidden, bias=bias, **factory), nn.ReLU(inplace=True),
        nn.Linear(hidden, 2 * num_channels, bias=bias, **factory)
    )


def zero_last_linear(generator: nn.Module) -> None:
    """Zero the last Linear layer so the generator outputs delta-gamma = beta = 0 (identity at init)."""
    last = [m for m in generator.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)


class FiLM(nn.Module):
    """FiLM layer (Perez et al. 2018): ``(1 + delta_gamma(z)) * x + beta(z)`` per channel.

    ``forward(x, covariates=None)``: ``x`` (N, C, *spatial) with any number of spatial dims (also
    (N, C)); covariates (N, K), read from the context when omitted. ``hidden=None`` makes the
    generator linear in z (as in the paper's FiLM generator output layer); an int adds a ReLU hidden
    layer of that width (DAFT's ``FilmBlock``: bottleneck width, ``bias=False``). ``init="identity"``:
    the generator's last layer starts at zero, the layer is the identity; ``init="reference"``:
    PyTorch's default init and gamma predicted directly (no ``1 +``), as DAFT's ``FilmBlock``.
    """

    def __init__(
        self,
        num_channels: int,
        num_covariates: int,
        hidden: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        bias: bool = True,
        init: str = "identity",
    ) -> None:
        super().__init__()
        if num_channels < 1 or num_covariates < 1:
            raise ValueError(f"num_channels and num_covariates must be >= 1, got {num_channels} and {num_covariates}")
        self.num_channels, self.num_covariates, self.hidden = num_channels, num_covariates, hidden
        self.offset = check_init(init)
        self.generator = affine_generator(num_covariates, num_channels, hidden, bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default init for every layer; with ``init="identity"`` the last layer zero, so gamma = 1 and beta = 0."""
        for m in self.generator.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.offset:
            zero_last_linear(self.generator)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"FiLM expects input (N, {self.num_channels}, ...), got {tuple(x.shape)}")
        covariates = layer_covariates(covariates, "FiLM", x, self.num_covariates)
        delta_gamma, beta = self.generator(covariates.to(self.generator_dtype)).chunk(2, dim=1)
        return film(x, self.offset + delta_gamma, beta)

    @property
    def generator_dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, num_covariates={self.num_covariates}, hidden={self.hidden}"


class FiLMAfter(nn.Module):
    """``module`` followed by :class:`FiLM` with the context's covariates; drop-in for ``module``.

    Placed where a BatchNorm was (FiLM after normalisation, as in the paper's residual blocks), so
    unmodified torchvision models gain FiLM without editing their ``forward``. The wrapped module's
    parameters move one level down in the state dict (``features.1.weight`` becomes
    ``features.1.module.weight``); load pretrained weights before wrapping.
    """

    def __init__(self, module: nn.Module, num_channels: int, num_covariates: int, hidden: int | None = None,
                 **options) -> None:
        super().__init__()
        self.module = module
        self.film = FiLM(num_channels, num_covariates, hidden, **options)

    def forward(self, x: Tensor) -> Tensor:
        return self.film(self.module(x), current_covariates("FiLMAfter"))
