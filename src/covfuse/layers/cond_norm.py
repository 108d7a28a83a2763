"""Conditional batch / instance normalisation (de Vries et al., NeurIPS 2017): the norm's scale and shift from z.

``y = (gamma + delta_gamma(z)) * x_hat + (beta + delta_beta(z))`` per channel, where ``x_hat`` is the
input normalised exactly as the wrapped ``BatchNorm*d`` / ``InstanceNorm*d`` normalises it (same
statistics, running averages, momentum and eps, train or eval as the norm is) and gamma, beta are
its own affine parameters (1 and 0 when it has none). As the reference, delta_gamma and delta_beta
come from two separate MLPs (Linear-ReLU-Linear, ``hidden`` units), delta_beta's output layer
without a bias. Computed as the norm without its affine plus one per-sample affine (one
``addcmul``); a BatchNorm in eval mode with running statistics folds the two into that single pass.

Where covfuse differs from the reference (GuessWhatGame/neural_toolbox ``cbn_pluggin.py``,
``CBNfromLSTM`` at commit 81a2331, the version of the paper's experiments): the reference predicts
the deltas from an LSTM question embedding, here from the covariate vector; its weights start
U(-1e-4, 1e-4) (biases 0), here the two output layers start at zero so a fresh layer is exactly the
norm it wraps (``init="reference"`` restores U(+-1e-4)). ``hidden=None`` makes both maps linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from covfuse.layers.context import layer_covariates
from covfuse.layers.film import film
from covfuse.layers.helpers import check_init

NORMS = (_BatchNorm, _InstanceNorm)


def normalize(norm: nn.Module, x: Tensor) -> Tensor:
    """``x`` normalised by ``norm`` without its affine part, updating its running statistics as it would."""
    if isinstance(norm, _InstanceNorm):  # as nn.InstanceNorm*d.forward: a momentum of None is 0.0
        use_input_stats = norm.training or not norm.track_running_stats
        return F.instance_norm(x, norm.running_mean, norm.running_var, None, None, use_input_stats,
                               norm.momentum if norm.momentum is not None else 0.0, norm.eps)
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    use_batch = norm.training or (norm.running_mean is None and norm.running_var is None)
    keep = not norm.training or norm.track_running_stats
    return F.batch_norm(x, norm.running_mean if keep else None, norm.running_var if keep else None, None, None,
                        use_batch, factor, norm.eps)


def _delta_map(num_covariates: int, hidden: int | None, num_channels: int, bias: bool, **factory) -> nn.Module:
    if hidden is None:
        return nn.Linear(num_covariates, num_channels, bias=bias, **factory)
    if hidden < 1:
        raise ValueError(f"hidden must be a positive int or None, got {hidden}")
    return nn.Sequential(nn.Linear(num_covariates, hidden, **factory), nn.ReLU(),
                         nn.Linear(hidden, num_channels, bias=bias, **factory))


class ConditionalNorm(nn.Module):
    """A BatchNorm/InstanceNorm (1d/2d/3d) whose scale and shift also depend on the covariates.

    ``forward(x, covariates=None)``; covariates (N, K), read from the context when omitted. The
    wrapped norm is ``self.norm`` (its state-dict keys move one level down: ``bn1.weight`` becomes
    ``bn1.norm.weight``); ``self.gamma`` and ``self.beta`` predict delta_gamma and delta_beta.
    """

    def __init__(self, norm: nn.Module, num_covariates: int, hidden: int | None = 16, init: str = "identity") -> None:
        super().__init__()
        if not isinstance(norm, NORMS):
            raise TypeError(f"ConditionalNorm wraps a BatchNorm or InstanceNorm, got {type(norm).__name__}")
        if num_covariates < 1:
            raise ValueError(f"num_covariates must be >= 1, got {num_covariates}")
        check_init(init)
        self.norm, self.num_covariates, self.hidden = norm, num_covariates, hidden
        self.num_channels = norm.num_features
        param = norm.weight if norm.weight is not None else norm.running_mean
        factory = {} if param is None else {"device": param.device, "dtype": param.dtype}
        self.gamma = _delta_map(num_covariates, hidden, self.num_channels, True, **factory)
        self.beta = _delta_map(num_covariates, hidden, self.num_channels, False, **factory)
        self.reset_parameters(init)

    def reset_parameters(self, init: str = "identity") -> None:
        """``identity``: output layers zero (the wrapped norm); ``reference``: weights U(-1e-4, 1e-4), biases 0."""
        for generator in (self.gamma, self.beta):
            linears = [m for m in generator.modules() if isinstance(m, nn.Linear)]
            for m in linears:
                if init == "reference":  # cbn_pluggin.py: RandomUniform(-1e-4, 1e-4) weights, Constant(0) biases
                    nn.init.uniform_(m.weight, -1e-4, 1e-4)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
            if init == "identity":
                nn.init.zeros_(linears[-1].weight)
                if linears[-1].bias is not None:
                    nn.init.zeros_(linears[-1].bias)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"ConditionalNorm expects input (N, {self.num_channels}, ...), got {tuple(x.shape)}")
        z = layer_covariates(covariates, "ConditionalNorm", x, self.num_covariates)
        gamma, beta = self.affine(z)
        norm = self.norm
        if (isinstance(norm, _BatchNorm) and not norm.training and norm.track_running_stats
                and norm.running_mean is not None):
            # Running statistics: normalisation and affine fold into one per-sample affine (one pass).
            inv = torch.rsqrt(norm.running_var + norm.eps)
            scale = gamma * inv
            return film(x, scale, beta - norm.running_mean * scale)
        return film(normalize(norm, x), gamma, beta)

    def affine(self, covariates: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample scale ``gamma + delta_gamma(z)`` and shift ``beta + delta_beta(z)``, each (N, C)."""
        z = covariates.to(next(self.gamma.parameters()).dtype)
        gamma, beta = self.gamma(z), self.beta(z)
        if self.norm.weight is None:
            return 1 + gamma, beta
        return self.norm.weight + gamma, self.norm.bias + beta

    def extra_repr(self) -> str:
        return f"num_covariates={self.num_covariates}, hidden={self.hidden}"


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a norm :class:`ConditionalNorm` can wrap."""
    return isinstance(module, NORMS)


__all__ = ["ConditionalNorm", "is_norm", "normalize"]
