"""Every method equals its image-only model at initialisation, in every regime, in train and eval mode
(issue 26): same backbone weights, any covariates, on a 2D VGG, a 2D ResNet, a 3D ResNet and MONAI's."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from covfuse.models import build
from covfuse.models.registry import REGIMES

# concat-2fc is left out: it starts with a fresh two-layer head (docs/methods.md), not the image head.
METHODS = ["concat", "mlpcatmlp", "film", "daft", "duanmu", "tab-attention", "cond-norm", "hybrid", "hyper"]
BACKBONES = ["vgg-mini", "resnet18", "resnet3d-compact", "monai-resnet10"]
K = 3
SEED = 7


@functools.lru_cache(maxsize=None)
def _image_only(backbone: str, regime: str, monai: bool):
    torch.manual_seed(SEED)
    return build(backbone, "image-only", 0, regime=regime)


def _inputs(backbone: str) -> torch.Tensor:
    shape = (1, 16, 16, 16) if backbone in ("resnet3d-compact", "monai-resnet10") else (3, 32, 32)
    return torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))


def _run(model, x, z, train: bool) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(5)  # the same dropout masks in both models
    with torch.no_grad():
        return model(x, z)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_method_starts_as_image_only_in_every_regime_and_mode(backbone, method, small_monai):
    x = _inputs(backbone)
    z = torch.randn(4, K, generator=torch.Generator().manual_seed(2)) * 3
    for regime in REGIMES:
        image_only = copy.deepcopy(_image_only(backbone, regime, backbone == "monai-resnet10"))
        torch.manual_seed(SEED)
        model = build(backbone, method, K, regime=regime)
        for train in (True, False):  # train mode first: running statistics must move alike in both
            expected = _run(image_only, x, torch.zeros(4, 0), train)
            torch.testing.assert_close(_run(model, x, z, train), expected, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"{method} {regime} train={train}: {m}")
        if method == "tab-attention" and regime == "finetune":  # on every norm, also those no ReLU follows
            image_only = copy.deepcopy(_image_only(backbone, regime, backbone == "monai-resnet10"))
            torch.manual_seed(SEED)
            everywhere = build(backbone, method, K, regime=regime, tab_attention_layers="all")
            for train in (True, False):
                expected = _run(image_only, x, torch.zeros(4, 0), train)
                torch.testing.assert_close(_run(everywhere, x, z, train), expected, rtol=1e-5, atol=1e-5)
        if regime in ("features-frozen", "linear-probe"):
            # Only the conditioning and the head train; hybrid and hyper convs train their W_0 too
            # (docs/methods.md), every other method leaves the image model's frozen parameters frozen.
            frozen = {n for n, p in image_only.named_parameters() if not p.requires_grad}
            for name, p in model.named_parameters():
                plain = name.replace(".module.", ".").replace(".norm.", ".").replace(".image.", ".")
                if plain in frozen and p.requires_grad and method not in ("hybrid", "hyper"):
                    raise AssertionError(f"{method} {regime}: {name} trains but is frozen in the image-only model")
