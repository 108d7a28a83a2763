"""Conditional batch / instance normalisation (de Vries et al., NeurIPS 2017): the norm's scale and shift from z.

``y = (gamma + delta_gamma(z)) * x_hat + (beta + delta_beta(z))`` per channel, where ``x_hat`` is the
input normalised exactly as the wrapped ``BatchNorm*d`` / ``InstanceNorm*d`` normalises it (same
statistics, running averages, momentum and eps) and gamma, beta are its own affine parameters (1 and
0 when it has none). delta_gamma and delta_beta come from a linear map or a one-hidden-layer MLP of
z whose last layer starts at zero, so a fresh layer equals the norm it wraps.

Where covfuse differs from the reference (de Vries et al. 2017, "Modulating early visual processing
by language"): they predict the deltas from an LSTM question embedding through a one-hidden-layer
MLP; here the input is the covariate vector and the MLP's width is an option (``hidden=None``: linear).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from covfuse.layers.context import layer_covariates
from covfuse.layers.film import affine_generator, film, zero_last_linear

NORMS = (_BatchNorm, _InstanceNorm)


def normalize(norm: nn.Module, x: Tensor) -> Tensor:
    """``x`` normalised by ``norm`` without its affine part, updating its running statistics as it would."""
    if isinstance(norm, _InstanceNorm):
        use_input_stats = norm.training or not norm.track_running_stats
        return F.instance_norm(x, norm.running_mean, norm.running_var, None, None, use_input_stats,
                               norm.momentum if norm.momentum is not None else 0.1, norm.eps)
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    use_batch = norm.training or (norm.running_mean is None and norm.running_var is None)
    keep = not norm.training or norm.track_running_stats
    return F.batch_norm(x, norm.running_mean if keep else None, norm.running_var if keep else None, None, None,
                        use_batch, factor, norm.eps)


class ConditionalNorm(nn.Module):
    """A BatchNorm/InstanceNorm (1d/2d/3d) whose scale and shift also depend on the covariates.

    ``forward(x, covariates=None)``; covariates (N, K), read from the context when omitted. The
    wrapped norm is ``self.norm`` (its state-dict keys move one level down: ``bn1.weight`` becomes
    ``bn1.norm.weight``); ``self.generator`` predicts (delta_gamma, delta_beta).
    """

    def __init__(self, norm: nn.Module, num_covariates: int, hidden: int | None = 16) -> None:
        super().__init__()
        if not isinstance(norm, NORMS):
            raise TypeError(f"ConditionalNorm wraps a BatchNorm or InstanceNorm, got {type(norm).__name__}")
        if num_covariates < 1:
            raise ValueError(f"num_covariates must be >= 1, got {num_covariates}")
        self.norm, self.num_covariates, self.hidden = norm, num_covariates, hidden
        self.num_channels = norm.num_features
        param = norm.weight if norm.weight is not None else (norm.running_mean if norm.running_mean is not None else None)
        factory = {} if param is None else {"device": param.device, "dtype": param.dtype}
        self.generator = affine_generator(num_covariates, self.num_channels, hidden, **factory)
        zero_last_linear(self.generator)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"ConditionalNorm expects input (N, {self.num_channels}, ...), got {tuple(x.shape)}")
        covariates = layer_covariates(covariates, "ConditionalNorm", x, self.num_covariates)
        x_hat = normalize(self.norm, x)
        weight = next(self.generator.parameters())
        delta_gamma, delta_beta = self.generator(covariates.to(weight.dtype)).chunk(2, dim=1)
        gamma = 1 + delta_gamma if self.norm.weight is None else self.norm.weight + delta_gamma
        beta = delta_beta if self.norm.bias is None else self.norm.bias + delta_beta
        return film(x_hat, gamma, beta)

    def extra_repr(self) -> str:
        return f"num_covariates={self.num_covariates}, hidden={self.hidden}"


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a norm :class:`ConditionalNorm` can wrap."""
    return isinstance(module, NORMS)


__all__ = ["ConditionalNorm", "is_norm", "normalize"]
