"""HyperConv1d/2d/3d: convolutions whose kernel a hypernetwork generates from the covariates (HyperFusion).

Sample i is convolved with ``W_0 + sum_e h_e(z_i) W_e`` and gets bias ``b_0 + sum_e h_e(z_i) b_e``,
where ``h`` is an MLP (``depth`` Linear-ReLU layers of ``width`` units) from the covariates z to a
code of E values and (W_e, b_e) is the hypernetwork's last, linear layer. With ``depth=0`` the code
is z itself and the layer is exactly :class:`covfuse.layers.HybridConv2d` (its linear special case).

Kernels are applied by the hybrid back-ends (:mod:`covfuse.layers.hybrid_functional`) with the
code in place of the covariates: ``expand`` and ``grouped`` with no loop over the batch, and
``pattern`` (one conv per distinct covariate row) runs the MLP on the distinct rows only. ``auto``
tunes among those and the other batch-wide back-ends (``unfold``; ``triton`` on CUDA), never the
per-sample loop (``reference``, kept for tests) that hybrid's tuning and rule may pick. Cost: the code width E plays the part of K, so a hyper conv costs
about what a hybrid conv with E covariates costs (docs/performance.md).

Where covfuse differs from the reference (daniel4725/HyperFusion, ``models/Hyperfusion/hyper_base.py``):
- the reference loops over the batch in Python; here the batch is one (grouped or dense) conv;
- its ``HyperConv3dLayer.forward`` convolves sample i with the kernel generated for sample i+1 (the
  loop zips ``weights[1:]`` with ``x[i]``); we follow the definition, out_i = conv(x_i, W(z_i));
- its weight generator's bias (the constant kernel) starts at 0 and its weights by a variance rule
  measured on the training data; here the constant kernel is the pretrained conv's W_0 and the
  generated part starts at zero, so a converted model starts as the image-only model
  (``init="reference"``: the reference's rule, with the input variance taken as 1);
- its embedding (Linear-BatchNorm1d-PReLU, ``embedding="reference"``) is taken from a separately
  pretrained tabular model; here it is trained with the network.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from covfuse.layers import autotune
from covfuse.layers.context import layer_covariates
from covfuse.layers.helpers import IntOrTuple, check_init, normalize_padding, to_ntuple
from covfuse.layers.hybrid_functional import _CONV, _IMPLEMENTATIONS, BACKENDS, _auto, _call, _pattern, rule_backend, traced_backend, unique_rows


def hyper_conv(x: Tensor, covariates: Tensor, embed: nn.Module, weight: Tensor, hyper_weight: Tensor,
               bias: Tensor | None = None, hyper_bias: Tensor | None = None, stride=1, padding=0, dilation=1,
               groups: int = 1, backend: str = "auto") -> Tensor:
    """Convolve sample i of ``x`` with ``weight + sum_e embed(covariates)[i, e] * hyper_weight[e]``.

    ``embed`` maps (N, K) to (N, E); ``hyper_weight`` is (E, O, C/groups, *k), ``hyper_bias`` (E, O).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv = _CONV[weight.dim() - 2]
    requested = backend
    z = covariates.to(weight.dtype)
    if backend in ("pattern", "auto") and z.requires_grad and torch.is_grad_enabled():
        # Gradients w.r.t. each sample's covariates (attribution): treat every row on its own.
        backend = rule_backend(x, x.shape[0], weight, groups)
    if backend == "auto" and not autotune.can_tune():  # tracing: no host sync, every row on its own
        backend = traced_backend(x, weight, groups)
    if backend == "reference" and requested == "auto":  # never a loop over the batch unless asked for
        backend = "grouped"
    if backend in ("pattern", "auto"):
        patterns, inverse, counts = unique_rows(z)
        # The embedding runs on the whole batch (its BatchNorm1d needs the batch's statistics, as in
        # the reference); each distinct row's code is read at its first sample.
        first = torch.full((len(patterns),), len(z), dtype=inverse.dtype, device=inverse.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(z), device=inverse.device), "amin")
        rows = (embed(z).index_select(0, first), inverse, counts)
        if backend == "auto":
            codes = rows[0].index_select(0, inverse)  # the same values as embed(z), row by row
            args = (x, codes, weight, hyper_weight, bias, hyper_bias, conv, kwargs)
            backend, _ = _auto(args, rows=rows, layer="HyperConv", loop=False)
            return _call(backend, args, rows)
        return _pattern(x, None, weight, hyper_weight, bias, hyper_bias, conv, kwargs, rows=rows)
    return _IMPLEMENTATIONS[backend](x, embed(z), weight, hyper_weight, bias, hyper_bias, conv, kwargs)


class BatchNorm1dAnyBatch(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that also takes a batch of one sample in training mode: one sample has no batch
    variance (torch raises "Expected more than 1 value per channel"), so it is normalised with the running
    statistics, as in evaluation, and they are left as they are. Larger batches: exactly BatchNorm1d."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1 and self.running_mean is not None:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            training=False, eps=self.eps)
        return super().forward(x)


EMBEDDINGS = ("reference", "relu")


def code_mlp(num_covariates: int, width: int, depth: int, embedding: str = "relu", **factory) -> nn.Module:
    """``depth`` layers of ``width`` units (``depth=0``: the identity, E = K): Linear-ReLU
    (``embedding="relu"``) or Linear-BatchNorm1d-PReLU (``"reference"``, HyperFusion's tabular embedding,
    ``MLP_8_bn_prl`` in ``models/base_models.py``)."""
    if depth < 0 or (depth > 0 and width < 1):
        raise ValueError(f"depth must be >= 0 and width >= 1, got depth={depth}, width={width}")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(num_covariates if i == 0 else width, width, **factory))
        layers += [BatchNorm1dAnyBatch(width, **factory), nn.PReLU(**factory)] if embedding == "reference" else [nn.ReLU()]
    return nn.Sequential(*layers)


class _HyperConvNd(nn.Module):
    """Shared implementation; use :class:`HyperConv1d`, :class:`HyperConv2d` or :class:`HyperConv3d`."""

    _dims: int = 0
    _conv_type: type[nn.Module] = nn.Module

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple, num_covariates: int,
                 stride: IntOrTuple = 1, padding: IntOrTuple | str = 0, dilation: IntOrTuple = 1, groups: int = 1,
                 bias: bool = True, backend: str = "auto", width: int = 8, depth: int = 1,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 embedding: str = "relu", init: str = "identity") -> None:
        super().__init__()
        n = self._dims
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        if num_covariates < 1:
            raise ValueError(f"num_covariates must be >= 1, got {num_covariates}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_channels, self.out_channels, self.num_covariates = in_channels, out_channels, num_covariates
        self.kernel_size = to_ntuple(kernel_size, n, "kernel_size")
        self.stride = to_ntuple(stride, n, "stride")
        self.padding = normalize_padding(padding, n, self.stride)
        self.dilation = to_ntuple(dilation, n, "dilation")
        check_init(init)
        self.groups, self.backend, self.width, self.depth = groups, backend, width, depth
        self.embedding, self.init = embedding, init
        factory = {"device": device, "dtype": dtype}
        self.embed = code_mlp(num_covariates, width, depth, embedding, **factory)
        codes = num_covariates if depth == 0 else width
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.hyper_weight = nn.Parameter(torch.empty((codes, *shape), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
            self.hyper_bias = nn.Parameter(torch.empty(codes, out_channels, **factory))
        else:
            self.register_parameter("bias", None)
            self.register_parameter("hyper_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The embedding as PyTorch initialises it. ``init="identity"``: W_0, b_0 as ``nn.ConvNd``
        initialises them and the generator zero (W(z) = W_0). ``init="reference"``: HyperFusion's
        ``variance_uniform_init`` with the input variance taken as 1 (standardised covariates): the
        constant kernel and bias (its generators' biases) 0, the generators' weights
        U(+-sqrt(3 var)) with var = 1 / (fan_in * E) for the kernel and 1 / E for the bias."""
        for m in self.embed:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        fan_in = self.weight[0].numel()
        codes = self.hyper_weight.shape[0]
        if self.init == "reference":  # hyper_base.py: calc_variance4init(main_net_relu=True, main_net_biasses=True)
            nn.init.zeros_(self.weight)
            nn.init.uniform_(self.hyper_weight, -math.sqrt(3 / (fan_in * codes)), math.sqrt(3 / (fan_in * codes)))
            if self.bias is not None:
                nn.init.zeros_(self.bias)
                nn.init.uniform_(self.hyper_bias, -math.sqrt(3 / codes), math.sqrt(3 / codes))
            return
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
            nn.init.zeros_(self.hyper_bias)
        nn.init.zeros_(self.hyper_weight)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        """``covariates`` (N, K); when omitted, taken from the enclosing converted-model call."""
        if x.dim() != self._dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input (N, {self.in_channels}, {', '.join('*' * self._dims)}), "
                             f"got {tuple(x.shape)}")
        covariates = layer_covariates(covariates, type(self).__name__, x, self.num_covariates)
        return hyper_conv(x, covariates, self.embed, self.weight, self.hyper_weight, self.bias, self.hyper_bias,
                          self.stride, self.padding, self.dilation, self.groups, self.backend)

    @classmethod
    def from_conv(cls, conv: nn.Module, num_covariates: int, width: int = 8, depth: int = 1, backend: str = "auto",
                  embedding: str = "relu", init: str = "identity", bias: bool | None = None):
        """A hyper conv whose W_0 and b_0 are exact copies of ``conv``'s: it computes what ``conv`` computes.

        ``bias=True`` generates a bias even where ``conv`` has none (b_0 = 0), as the reference always
        does; None: only where ``conv`` has one. ``init="reference"`` replaces the copies by the
        reference's initialisation (the pretrained kernel is then not used)."""
        if type(conv) is not cls._conv_type:
            raise TypeError(f"{cls.__name__}.from_conv expects an {cls._conv_type.__name__}, got {type(conv).__name__}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported; only 'zeros'")
        bias = conv.bias is not None if bias is None else bias
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, num_covariates, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias, backend, width, depth,
                    device=conv.weight.device, dtype=conv.weight.dtype, embedding=embedding, init=init)
        if init == "identity":
            with torch.no_grad():
                layer.weight.copy_(conv.weight)
                if layer.bias is not None:
                    layer.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(layer.bias))
        return layer

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, num_covariates={self.num_covariates}, "
                f"stride={self.stride}, width={self.width}, depth={self.depth}, backend={self.backend!r}")


class HyperConv1d(_HyperConvNd):
    """1D hypernetwork convolution."""

    _dims, _conv_type = 1, nn.Conv1d


class HyperConv2d(_HyperConvNd):
    """2D hypernetwork convolution (images)."""

    _dims, _conv_type = 2, nn.Conv2d


class HyperConv3d(_HyperConvNd):
    """3D hypernetwork convolution (volumes)."""

    _dims, _conv_type = 3, nn.Conv3d


HYPER_FOR_CONV: dict[type[nn.Module], type[_HyperConvNd]] = {
    nn.Conv1d: HyperConv1d, nn.Conv2d: HyperConv2d, nn.Conv3d: HyperConv3d,
}
HYPER_TYPES = (HyperConv1d, HyperConv2d, HyperConv3d)
