"""Covariate threading: hand per-sample covariates to conditioned layers deep inside an unmodified model.

A converted model's ``forward(x, covariates)`` opens :func:`use_covariates` around the original
``forward(x)``; every conditioned layer of :mod:`covfuse.layers` reads the covariates with
:func:`current_covariates` when it is called without them. A :class:`contextvars.ContextVar` is per thread and per task, so
DataParallel replicas (one thread each) and DDP processes never see each other's covariates, and
the value is reset when the call returns, so nothing leaks from one call into the next.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

_COVARIATES: ContextVar[torch.Tensor | None] = ContextVar("covfuse_covariates", default=None)


@contextmanager
def use_covariates(covariates: torch.Tensor) -> Iterator[torch.Tensor]:
    """Make ``covariates`` (N, K) visible to conditioned layers for the duration of the block."""
    token = _COVARIATES.set(covariates)
    try:
        yield covariates
    finally:
        _COVARIATES.reset(token)


def current_covariates(layer: str = "this layer") -> torch.Tensor:
    """The covariates of the call in progress; a clear error when a layer is called without them."""
    covariates = _COVARIATES.get()
    if covariates is None:
        raise RuntimeError(
            f"{layer} needs covariates: call it as layer(x, covariates), or call the model returned "
            "by covfuse.convert(...) as model(x, covariates)"
        )
    return covariates


def check_covariates(covariates: torch.Tensor, batch: int, num_covariates: int, device: torch.device) -> None:
    """Raise ValueError unless ``covariates`` is a finite float tensor (batch, num_covariates) on ``device``."""
    if not isinstance(covariates, torch.Tensor):
        raise ValueError(f"covariates must be a tensor of shape ({batch}, {num_covariates}), got {type(covariates).__name__}")
    expected = (batch, num_covariates)
    if tuple(covariates.shape) != expected:
        raise ValueError(f"covariates must have shape {expected} (batch, num_covariates), got {tuple(covariates.shape)}")
    if not covariates.is_floating_point():
        raise ValueError(f"covariates must be a float tensor, got {covariates.dtype}")
    if covariates.device != device:
        raise ValueError(f"covariates are on {covariates.device} but the input is on {device}; move them with .to({str(device)!r})")
    # The finiteness check needs a host sync: skipped while tracing for torch.compile or capturing a CUDA graph.
    capturing = covariates.is_cuda and torch.cuda.is_current_stream_capturing()
    if not torch.compiler.is_compiling() and not capturing and not bool(torch.isfinite(covariates).all()):
        raise ValueError("covariates contain NaN or infinite values; impute or drop those samples first")


def layer_covariates(covariates: torch.Tensor | None, layer: str, x: torch.Tensor, num_covariates: int) -> torch.Tensor:
    """The covariates a conditioned layer uses: the ones passed in (validated against ``x``), or
    those of the enclosing converted-model call (already validated there)."""
    if covariates is None:
        return current_covariates(layer)
    check_covariates(covariates, x.shape[0], num_covariates, x.device)
    return covariates
