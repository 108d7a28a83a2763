"""The research's model, vgg16_bn with a two-class head, made hybrid at each placement the research log tried.

Random weights stand in for ImageNet's (no network): they are saved as a state-dict file and loaded
with ``weights=PATH``, and the unconverted torchvision model with the same weights is the reference.
Inputs are 32x32, batch 2, so the test stays CPU-cheap (VGG's adaptive pooling accepts any size).
"""
from __future__ import annotations

import pytest
import torch
import torchvision

from covfuse.layers import HybridConv2d
from covfuse.models import build

# first conv, third conv (index 2 in the conv list), features.14, last conv.
RESEARCH_PLACEMENTS = [("features.0", "features.0"), (2, "features.7"), ("features.14", "features.14"),
                       ("features.40", "features.40")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16_bn().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn_random.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def _reference_logits(reference, head, x):
    """The unconverted model's function, with the task head the built model carries."""
    features = torch.flatten(reference.avgpool(reference.features(x)), 1)
    return head(reference.classifier[:6](features))


@pytest.mark.parametrize("layers, name", RESEARCH_PLACEMENTS)
def test_hybrid_preserves_function_at_init_and_learns(pretrained, layers, name):
    reference, path = pretrained
    model = build("vgg16_bn", "hybrid", 3, hybrid_layers=[layers], weights=path, head="two-class")
    assert model.config["hybrid_layers"] == [name]
    layer = model.network.get_submodule(name)
    assert isinstance(layer, HybridConv2d)
    assert torch.equal(layer.weight, reference.get_submodule(name).weight)  # W_0 copied from the conv
    assert model.network.classifier[6].weight.shape == (2, 4096)  # the research's Linear(4096, 2)

    model.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = _reference_logits(reference, model.network.classifier[6], x)
        for z in (torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), torch.randn(2, 3) * 3):
            torch.testing.assert_close(model(x, z), expected, rtol=1e-5, atol=1e-5)

    assert not layer.covariate_weight.any() and not layer.covariate_bias.any()
    model.train()
    model.requires_grad_(False)  # only the hybrid layer steps: the 120M classifier weights would cost seconds
    layer.requires_grad_(True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    torch.nn.functional.cross_entropy(model(x, z), torch.tensor([0, 1])).backward()
    opt.step()
    assert layer.covariate_weight.abs().sum() > 0 and layer.covariate_bias.abs().sum() > 0


def test_regimes_on_vgg16_bn_count_hand_counted_parameters(pretrained):
    _, path = pretrained
    classifier = (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 2 + 2)
    last_conv = 512 * 512 * 9 + 512
    cases = [
        ("image-only", "features-frozen", classifier),
        ("image-only", "linear-probe", 4096 * 2 + 2),
        ("hybrid", "linear-probe", 4096 * 2 + 2 + last_conv * (1 + 3)),  # the whole hybrid layer trains
    ]
    for fusion, regime, expected in cases:
        model = build("vgg16_bn", fusion, 3, hybrid_layers="features.40", weights=path, regime=regime, head="two-class")
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected, (fusion, regime)
