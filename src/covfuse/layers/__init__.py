"""Conditioned layers, usable on their own: hybrid and hyper convolutions, FiLM, DAFT, conditional norms,
tabular attention, Duanmu gating, the MLP-concat head and the covariate threading."""
from covfuse.layers.autotune import AutoChoice, auto_choices, clear_choices, set_autotune
from covfuse.layers.cond_norm import ConditionalNorm
from covfuse.layers.context import current_covariates, use_covariates
from covfuse.layers.convert import CovariateModel, conv_names, convert, resolve_layers
from covfuse.layers.daft import DAFT, DAFTAfter, daft
from covfuse.layers.duanmu import DuanmuAttention, DuanmuFactor, DuanmuGate, channel_gate
from covfuse.layers.film import FiLM, FiLMAfter, film
from covfuse.layers.hybrid import HybridConv1d, HybridConv2d, HybridConv3d, hybrid_layers
from covfuse.layers.hybrid_functional import BACKENDS, choose_backend, hybrid_conv, rule_backend
from covfuse.layers.hyper import HyperConv1d, HyperConv2d, HyperConv3d, hyper_conv
from covfuse.layers.mlpcat import MLPCatHead
from covfuse.layers.tab_attention import TabAttention, TabAttentionAfter

__all__ = [
    "AutoChoice",
    "BACKENDS",
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
    "auto_choices",
    "channel_gate",
    "choose_backend",
    "clear_choices",
    "conv_names",
    "convert",
    "current_covariates",
    "daft",
    "film",
    "hybrid_conv",
    "hybrid_layers",
    "hyper_conv",
    "resolve_layers",
    "rule_backend",
    "set_autotune",
    "use_covariates",
]
