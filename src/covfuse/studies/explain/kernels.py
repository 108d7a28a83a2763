"""Inside the conditioning layers: how big each covariate's part is, and what each method's covariate path changes.

Hybrid convs: ||W_j|| / ||W_0|| per layer and per output channel (Frobenius norms; a freshly
converted model has zero covariate kernels, so every ratio is 0). Concat and MLP-concat heads: the
covariate columns against the image columns. Every other method changes something per sample,
recorded for the samples of a split and summarised per covariate value (two quantities each,
``QUANTITIES``): FiLM and DAFT the scale and shift they predict, conditional norms the norm's
scale and shift, tab-attention its channel gate and mean spatial gate, Duanmu gates their channel
factor, hyper convs the size of the generated kernel change per output channel (relative to W_0)
and the generated bias change. They are captured with forward hooks, so the layers need no changes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from covfuse.data.groups import as_groupings
from covfuse.layers.cond_norm import ConditionalNorm
from covfuse.layers.context import current_covariates
from covfuse.layers.daft import DAFT
from covfuse.layers.duanmu import DuanmuFactor
from covfuse.layers.film import FiLM
from covfuse.layers.hyper import HYPER_TYPES
from covfuse.layers.mlpcat import MLPCatHead
from covfuse.layers.tab_attention import TabAttention
from covfuse.models.fusion import CONDITIONING_KINDS, HYBRID_TYPES, ConcatHead

# What the two recorded per-sample quantities ("scale", "shift" in explain.json) are, per kind.
QUANTITIES = {
    "film": ("scale", "shift"), "daft": ("scale", "shift"), "cond-norm": ("norm scale", "norm shift"),
    "tab-attention": ("channel gate", "mean spatial gate"), "duanmu": ("channel factor", "(none)"),
    "hyper": ("||dW|| / ||W_0|| per channel", "bias change"),
}
RECORDED = (FiLM, DAFT, ConditionalNorm, TabAttention, DuanmuFactor, *HYPER_TYPES)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float | None:
    den_v = float(den)
    return float(num) / den_v if den_v > 0 else None


def hybrid_norms(layer: nn.Module, names: list[str]) -> dict:
    """Relative size of each covariate's kernel (and bias) in one hybrid conv."""
    w0 = layer.weight.detach().float()
    cw = layer.covariate_weight.detach().float()
    base_channel = w0.flatten(1).norm(dim=1)  # (O,)
    out = {"kind": "hybrid", "relative_norm": {}, "relative_norm_per_channel": {}}
    for j, name in enumerate(names):
        out["relative_norm"][name] = _ratio(cw[j].norm(), w0.norm())
        per = cw[j].flatten(1).norm(dim=1) / base_channel.clamp_min(torch.finfo(torch.float32).tiny)
        out["relative_norm_per_channel"][name] = [round(float(v), 6) for v in per]
    if layer.bias is not None:
        b0, cb = layer.bias.detach().float(), layer.covariate_bias.detach().float()
        out["relative_bias_norm"] = {name: _ratio(cb[j].norm(), b0.norm()) for j, name in enumerate(names)}
    return out


def concat_norms(head: ConcatHead, names: list[str]) -> dict:
    """Norm of each covariate's column in the concatenation head, relative to the image block's mean column norm."""
    image = head.image.weight.detach().float().norm(dim=0).mean()
    cov = head.covariates.weight.detach().float()
    return {"kind": "concat", "relative_norm": {name: _ratio(cov[:, j].norm(), image) for j, name in enumerate(names)}}


def mlpcat_norms(head: MLPCatHead, names: list[str]) -> dict:
    """Each covariate's linear path through the MLP-concat head (``||C T[:, j]||``, the ReLU taken as open),
    relative to the image block's mean column norm."""
    image = head.image.weight.detach().float().norm(dim=0).mean()
    path = head.covariates.weight.detach().float() @ head.mlp.weight.detach().float()  # (out, K)
    return {"kind": "mlpcatmlp", "relative_norm": {name: _ratio(path[:, j].norm(), image) for j, name in enumerate(names)}}


def weight_summaries(network: nn.Module, names: list[str]) -> dict[str, dict]:
    """{layer name: summary} for hybrid convs and concat heads (computed from the weights alone)."""
    out = {}
    for name, m in network.named_modules():
        if isinstance(m, HYBRID_TYPES):
            out[name] = hybrid_norms(m, names)
        elif isinstance(m, ConcatHead):
            out[name] = concat_norms(m, names)
        elif isinstance(m, MLPCatHead):
            out[name] = mlpcat_norms(m, names)
    return out


def _covariates(module: nn.Module, inputs: tuple) -> torch.Tensor:
    return inputs[1] if len(inputs) > 1 and inputs[1] is not None else current_covariates(type(module).__name__)


def per_sample_change(module: nn.Module, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The two per-sample quantities (QUANTITIES) a conditioning layer computes for this call."""
    z = _covariates(module, inputs)
    if isinstance(module, DuanmuFactor):  # only stage 0's factor owns the chain's parameters
        factor = module.factor(z)
        return factor, torch.zeros_like(factor[:, :1])
    z = z.to(next(module.parameters()).dtype)
    if isinstance(module, HYPER_TYPES):
        codes = module.embed(z)
        delta = (codes @ module.hyper_weight.flatten(1)).view(len(z), module.out_channels, -1)
        base = module.weight.flatten(1).norm(dim=1).clamp_min(torch.finfo(module.weight.dtype).tiny)
        bias = codes @ module.hyper_bias if module.hyper_bias is not None else z.new_zeros(len(z), module.out_channels)
        return delta.norm(dim=2) / base, bias
    if isinstance(module, ConditionalNorm):  # the norm's own affine plus the predicted change
        return module.affine(z)
    if isinstance(module, TabAttention):
        x = inputs[0]
        gate = module.channel_gate(x, z)
        spatial = module.spatial_gate(x * gate.view(*gate.shape, *(1,) * module.dims), z)
        return gate, spatial.flatten(1).mean(1, keepdim=True)
    raise TypeError(type(module).__name__)


class AffineRecorder:
    """Collects, per sample, the two quantities (QUANTITIES) every recorded conditioning layer computes."""

    def __init__(self, network: nn.Module) -> None:
        self.layers = {name: m for name, m in network.named_modules() if isinstance(m, RECORDED)}
        self.scale: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}
        self.shift: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}

    def _hook(self, name: str, norm: nn.Module | None = None, module_offset: float = 1.0):
        def hook(module, inputs, output):
            delta, shift = output.detach().float().chunk(2, dim=1)
            if norm is None:  # FiLM, DAFT: scale = offset + delta (offset 1; 0 for the reference's variant)
                scale = module_offset + delta
            else:  # conditional norm: the norm's own affine plus the predicted change
                scale = delta + (1 if norm.weight is None else norm.weight.detach().float())
                shift = shift + (0 if norm.bias is None else norm.bias.detach().float())
            self.scale[name].append(scale.cpu().numpy())
            self.shift[name].append(shift.cpu().numpy())
        return hook

    def _layer_hook(self, name: str):
        def hook(module, inputs, output):
            with torch.no_grad():
                scale, shift = per_sample_change(module, inputs)
            self.scale[name].append(scale.detach().float().cpu().numpy())
            self.shift[name].append(shift.detach().float().cpu().numpy())
        return hook

    def _register(self, name: str, m: nn.Module):
        if isinstance(m, FiLM):
            return m.generator.register_forward_hook(self._hook(name, module_offset=m.offset))
        if isinstance(m, DAFT):
            return m.mlp.register_forward_hook(self._hook(name, module_offset=m.offset))
        return m.register_forward_hook(self._layer_hook(name))

    @contextmanager
    def recording(self) -> Iterator[AffineRecorder]:
        handles = [self._register(name, m) for name, m in self.layers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summaries(self, groupings: dict) -> dict[str, dict]:
        """Per layer: mean / SD / 5-95% range of scale and shift in each subgroup of every covariate
        (``groupings``: covariate -> :class:`covfuse.data.groups.Grouping` of the recorded samples, or
        plain values grouped one group per value), and for a covariate with two values (0/1, two
        levels), both present, the mean |difference| between them."""
        groupings = as_groupings(groupings)
        out = {}
        for layer, parts in self.scale.items():
            if not parts:
                continue
            scale, shift = np.concatenate(parts), np.concatenate(self.shift[layer])
            kind = CONDITIONING_KINDS[type(self.layers[layer])]
            entry: dict = {"kind": kind, "channels": int(scale.shape[1]), "quantities": list(QUANTITIES[kind]),
                           "values": {}, "difference": {}}
            for cov, grouping in groupings.items():
                means = {}
                for code in np.unique(grouping.codes):
                    key, mask = grouping.key(cov, code), grouping.codes == code
                    entry["values"][key] = {
                        q: {"mean": float(a[mask].mean()), "sd": float(a[mask].std()),
                            "p5": float(np.quantile(a[mask], 0.05)), "p95": float(np.quantile(a[mask], 0.95))}
                        for q, a in (("scale", scale), ("shift", shift))}
                    if grouping.labels[code] != grouping.missing:
                        means[key] = (scale[mask].mean(0), shift[mask].mean(0))
                if grouping.two_valued and len(means) == 2:
                    (s0, b0), (s1, b1) = means.values()
                    entry["difference"][cov] = {"scale": float(np.abs(s1 - s0).mean()), "shift": float(np.abs(b1 - b0).mean())}
            out[layer] = entry
        return out

    def samples(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), each (N, C), recorded for ``layer``."""
        return np.concatenate(self.scale[layer]), np.concatenate(self.shift[layer])
