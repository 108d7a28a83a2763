"""Conditioned layers, usable on their own: hybrid convolutions, FiLM, DAFT and the covariate threading."""
from covfuse.layers.context import current_covariates, use_covariates
from covfuse.layers.convert import CovariateModel, conv_names, convert, resolve_layers
from covfuse.layers.daft import DAFT, DAFTAfter, daft
from covfuse.layers.film import FiLM, FiLMAfter, film
from covfuse.layers.hybrid import HybridConv1d, HybridConv2d, HybridConv3d, hybrid_layers
from covfuse.layers.hybrid_functional import BACKENDS, choose_backend, hybrid_conv

__all__ = [
    "BACKENDS",
    "CovariateModel",
    "DAFT",
    "DAFTAfter",
    "FiLM",
    "FiLMAfter",
    "HybridConv1d",
    "HybridConv2d",
    "HybridConv3d",
    "choose_backend",
    "conv_names",
    "convert",
    "current_covariates",
    "daft",
    "film",
    "hybrid_conv",
    "hybrid_layers",
    "resolve_layers",
    "use_covariates",
]
