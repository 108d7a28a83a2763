"""Conditioned layers, usable on their own: hybrid and hyper convolutions, FiLM, DAFT, conditional norms,
tabular attention, Duanmu gating and the MLP-concat head; their functional forms; :func:`convert`, which
makes convs of any model hybrid and threads the covariates to them (:func:`use_covariates` does the same
for a model built by hand); and the ``auto`` back-end's tuning switch and record.

Internals (back-end rules, layer selection, the covariate context) stay in their modules."""
from covfuse.layers.autotune import auto_choices, set_autotune
from covfuse.layers.cond_norm import ConditionalNorm
from covfuse.layers.context import use_covariates
from covfuse.layers.convert import CovariateModel, convert
from covfuse.layers.daft import DAFT, DAFTAfter, daft
from covfuse.layers.duanmu import DuanmuAttention, DuanmuFactor, DuanmuGate, channel_gate
from covfuse.layers.film import FiLM, FiLMAfter, film
from covfuse.layers.hybrid import HybridConv1d, HybridConv2d, HybridConv3d
from covfuse.layers.hybrid_functional import hybrid_conv
from covfuse.layers.hyper import HyperConv1d, HyperConv2d, HyperConv3d, hyper_conv
from covfuse.layers.mlpcat import MLPCatHead
from covfuse.layers.tab_attention import TabAttention, TabAttentionAfter

__all__ = [
    # layers
    "ConditionalNorm",
    "CovariateModel",
    "DAFT",
    "DAFTAfter",
    "DuanmuAttention",
    "DuanmuFactor",
    "DuanmuGate",
    "FiLM",
    "FiLMAfter",
    "HybridConv1d",
    "HybridConv2d",
    "HybridConv3d",
    "HyperConv1d",
    "HyperConv2d",
    "HyperConv3d",
    "MLPCatHead",
    "TabAttention",
    "TabAttentionAfter",
    # functional forms
    "channel_gate",
    "daft",
    "film",
    "hybrid_conv",
    "hyper_conv",
    # any model made conditioned, and covariates for a model built by hand
    "convert",
    "use_covariates",
    # the auto back-end (docs/performance.md)
    "auto_choices",
    "set_autotune",
]
