"""Conditioned layers, usable on their own: hybrid convolutions, FiLM, DAFT and the covariate threading."""
from covfuse.layers.autotune import AutoChoice, auto_choices, clear_choices, set_autotune
from covfuse.layers.context import current_covariates, use_covariates
from covfuse.layers.convert import CovariateModel, conv_names, convert, resolve_layers
from covfuse.layers.daft import DAFT, DAFTAfter, daft
from covfuse.layers.film import FiLM, FiLMAfter, film
from covfuse.layers.hybrid import HybridConv1d, HybridConv2d, HybridConv3d, hybrid_layers
from covfuse.layers.hybrid_functional import BACKENDS, choose_backend, hybrid_conv, rule_backend

__all__ = [
    "AutoChoice",
    "BACKENDS",
    "CovariateModel",
    "DAFT",
    "DAFTAfter",
    "FiLM",
    "FiLMAfter",
    "HybridConv1d",
    "HybridConv2d",
    "HybridConv3d",
    "auto_choices",
    "choose_backend",
    "clear_choices",
    "conv_names",
    "convert",
    "current_covariates",
    "daft",
    "film",
    "hybrid_conv",
    "hybrid_layers",
    "resolve_layers",
    "rule_backend",
    "set_autotune",
    "use_covariates",
]
