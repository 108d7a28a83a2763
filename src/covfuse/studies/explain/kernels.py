"""Inside the conditioning layers: how big each covariate's part is, and what FiLM/DAFT predict.

Hybrid convs: ||W_j|| / ||W_0|| per layer and per output channel (Frobenius norms; a freshly
converted model has zero covariate kernels, so every ratio is 0). FiLM and DAFT: the scales and
shifts they predict for the samples of a split, summarised per covariate value; they are captured
with forward hooks on the generator, so the layers need no changes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from covfuse.layers.daft import DAFT
from covfuse.layers.film import FiLM
from covfuse.models.fusion import HYBRID_TYPES, ConcatHead


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


def weight_summaries(network: nn.Module, names: list[str]) -> dict[str, dict]:
    """{layer name: summary} for hybrid convs and concat heads (computed from the weights alone)."""
    out = {}
    for name, m in network.named_modules():
        if isinstance(m, HYBRID_TYPES):
            out[name] = hybrid_norms(m, names)
        elif isinstance(m, ConcatHead):
            out[name] = concat_norms(m, names)
    return out


class AffineRecorder:
    """Collects the (scale, shift) that every FiLM / DAFT layer predicts, per sample, while it is active."""

    def __init__(self, network: nn.Module) -> None:
        self.layers = {name: m for name, m in network.named_modules() if isinstance(m, (FiLM, DAFT))}
        self.scale: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}
        self.shift: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}

    def _hook(self, name: str):
        def hook(module, inputs, output):
            delta, shift = output.detach().float().chunk(2, dim=1)
            self.scale[name].append((1 + delta).cpu().numpy())
            self.shift[name].append(shift.cpu().numpy())
        return hook

    @contextmanager
    def recording(self) -> Iterator[AffineRecorder]:
        generators = {name: m.generator if isinstance(m, FiLM) else m.mlp for name, m in self.layers.items()}
        handles = [g.register_forward_hook(self._hook(name)) for name, g in generators.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def summaries(self, names: list[str], rows: np.ndarray) -> dict[str, dict]:
        """Per layer: mean / SD / 5-95% range of scale and shift for each value of each few-valued covariate."""
        from covfuse.training.metrics import MAX_GROUP_VALUES

        out = {}
        for layer, parts in self.scale.items():
            if not parts:
                continue
            scale, shift = np.concatenate(parts), np.concatenate(self.shift[layer])
            kind = "film" if isinstance(self.layers[layer], FiLM) else "daft"
            entry: dict = {"kind": kind, "channels": int(scale.shape[1]), "values": {}, "difference": {}}
            for k, cov in enumerate(names):
                values = np.unique(rows[:, k])
                if len(values) > MAX_GROUP_VALUES:
                    continue
                means = {}
                for v in values:
                    mask = rows[:, k] == v
                    entry["values"][f"{cov}={v:g}"] = {
                        key: {"mean": float(a[mask].mean()), "sd": float(a[mask].std()),
                              "p5": float(np.quantile(a[mask], 0.05)), "p95": float(np.quantile(a[mask], 0.95))}
                        for key, a in (("scale", scale), ("shift", shift))}
                    means[v] = (scale[mask].mean(0), shift[mask].mean(0))
                if len(values) == 2:
                    (s0, b0), (s1, b1) = means[values[0]], means[values[1]]
                    entry["difference"][cov] = {"scale": float(np.abs(s1 - s0).mean()), "shift": float(np.abs(b1 - b0).mean())}
            out[layer] = entry
        return out

    def samples(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift), each (N, C), recorded for ``layer``."""
        return np.concatenate(self.scale[layer]), np.concatenate(self.shift[layer])
