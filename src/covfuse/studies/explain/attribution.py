"""Where the model looks: Captum's Grad-CAM and integrated gradients, and how much of a map lies in a box.

Maps explain the log-odds of the target (one number per sample, whatever the head), so a map made
with the real covariates and one made with a counterfactual covariate vector can be compared
pixel by pixel. Attribution code comes from Captum (LayerGradCam, IntegratedGradients); only the
box arithmetic is ours.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

METHODS = ("grad-cam", "integrated-gradients")


class LogOdds(nn.Module):
    """The run's model as one log-odds per sample: the binary logit, or logit_1 - logit_0 of a two-class head."""

    def __init__(self, model: nn.Module, head: str = "binary") -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor, covariates: torch.Tensor) -> torch.Tensor:
        out = self.model(x, covariates)
        return out[:, 1] - out[:, 0] if self.head == "two-class" else out


def default_layer(network: nn.Module) -> str:
    """Name of the last convolution (plain or hybrid) in ``network``: Grad-CAM's usual layer."""
    names = [name for name, m in network.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd) or hasattr(m, "covariate_weight")]
    if not names:
        raise ValueError("the model has no convolution to make a Grad-CAM map at")
    # a ResNet's shortcut projection (downsample) is defined after the block's convs but is not the last feature map
    main_path = [n for n in names if "downsample" not in n]
    return (main_path or names)[-1]


def attribution_maps(f: LogOdds, layer: nn.Module, x: torch.Tensor, covariates: torch.Tensor,
                     n_steps: int = 32) -> dict[str, np.ndarray]:
    """{method: (N, *spatial) non-negative maps at the input's resolution} for inputs ``x`` (N, C, *spatial).

    Grad-CAM: ReLU of the gradient-weighted channel sum at ``layer``, upsampled bilinearly.
    Integrated gradients: |attribution| summed over colour channels, baseline the all-zero
    normalised image (mid-grey), ``n_steps`` Gauss-Legendre steps.
    """
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    size = tuple(x.shape[2:])
    cam = LayerGradCam(f, layer).attribute(x, additional_forward_args=(covariates,), relu_attributions=True)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    cam = LayerAttribution.interpolate(cam.detach().float(), size, interpolate_mode=mode).clamp_min(0)
    ig = IntegratedGradients(f).attribute(x, baselines=torch.zeros_like(x), additional_forward_args=(covariates,),
                                          n_steps=n_steps, internal_batch_size=max(1, x.shape[0]) * 8)
    return {
        "grad-cam": cam[:, 0].cpu().numpy().astype(np.float64),
        "integrated-gradients": ig.detach().abs().sum(1).float().cpu().numpy().astype(np.float64),
    }


def input_boxes(boxes: np.ndarray, crop: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Boxes (N, 4) in pixels of the stored image -> pixels of the S x S model input (after crop + resize)."""
    left, top, right, bottom = crop
    scale = np.array([size / (right - left), size / (bottom - top)] * 2)
    return (np.asarray(boxes, dtype=np.float64) - np.array([left, top, left, top])) * scale


def box_share(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Share of each map's total (N, H, W) inside its box (N, 4: x0, y0, x1, y1; pixel centres inside count)."""
    n, h, w = maps.shape
    xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # (N, W)
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # (N, H)
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    total = maps.reshape(n, -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (maps * mask).reshape(n, -1).sum(1) / np.where(total > 0, total, 1), np.nan)
