"""Training regimes freeze exactly what they promise (hand-counted), and frozen BatchNorm stays frozen."""
from __future__ import annotations

import pytest
import torch

from covfuse.models import build

K = 3
# vgg-mini, by hand: conv3x3 + bias per stage, BatchNorm weight + bias, classifier Linear(128, 128), head Linear(128, 1).
CONVS = [(3 * 9 + 1) * 16, (16 * 9 + 1) * 32, (32 * 9 + 1) * 64, (64 * 9 + 1) * 128]  # 448, 4640, 18496, 73856
NORMS = 2 * (16 + 32 + 64 + 128)
CLASSIFIER = 128 * 128 + 128
HEAD = 128 + 1
FIRST_HYBRID = CONVS[0] * (1 + K)                      # W_0, b_0 and K copies of both
# DAFT's --film_location 3: features.13, the first BatchNorm of the last stage (128 channels); DAFT's
# training-code bottleneck int((channels entering the last stage + K) / 7) = int((64 + 3) / 7) = 9; no biases.
FILM_LAST = K * 9 + 9 * 2 * 128                          # Linear(K, 9)-ReLU-Linear(9, 2C)
DAFT_DEFAULT = (128 + K) * 9 + 9 * 2 * 128               # Linear(C + K, 9)-ReLU-Linear(9, 2C)
CONCAT = HEAD + K                                        # covariate columns, no extra bias


@pytest.mark.parametrize("fusion, regime, expected", [
    ("image-only", "finetune", sum(CONVS) + NORMS + CLASSIFIER + HEAD),
    ("image-only", "scratch", sum(CONVS) + NORMS + CLASSIFIER + HEAD),
    ("image-only", "features-frozen", CLASSIFIER + HEAD),
    ("image-only", "linear-probe", HEAD),
    ("hybrid", "features-frozen", CLASSIFIER + HEAD + FIRST_HYBRID),
    ("hybrid", "linear-probe", HEAD + FIRST_HYBRID),
    ("film", "linear-probe", HEAD + FILM_LAST),
    ("daft", "linear-probe", HEAD + DAFT_DEFAULT),
    ("concat", "linear-probe", CONCAT),
    ("concat", "features-frozen", CLASSIFIER + CONCAT),
    ("hybrid+film+daft+concat", "linear-probe", CONCAT + FIRST_HYBRID + FILM_LAST + DAFT_DEFAULT),
])
def test_vgg_mini_trainable_parameters_match_hand_count(fusion, regime, expected):
    model = build("vgg-mini", fusion, K, regime=regime)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_resnet18_frozen_regimes_train_fc_only():
    for regime in ("features-frozen", "linear-probe"):
        model = build("resnet18", "image-only", 0, regime=regime)
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"network.fc.weight", "network.fc.bias"}
    model = build("resnet18", "film", K, regime="linear-probe", film_layers="layer4.1.bn2")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"network.fc.weight", "network.fc.bias", "network.layer4.1.bn2.film.generator.0.weight",
                     "network.layer4.1.bn2.film.generator.2.weight"}


def test_frozen_regime_step_changes_only_trainable_parameters_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = build("vgg-mini", "hybrid", K, regime="linear-probe", hybrid_layers="features.4")
    model.train()
    assert not model.network.features[1].training and model.network.classifier.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(4, 3, 32, 32) * 3 + 1, torch.randn(4, K)).sum().backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # The hybrid layer and the head move; every BatchNorm statistic, frozen weight and bias stays.
    assert changed == {"network.features.4.weight", "network.features.4.bias", "network.features.4.covariate_weight",
                       "network.features.4.covariate_bias", "network.classifier.3.weight", "network.classifier.3.bias"}


def test_finetune_and_frozen_norm_train_option_update_bn_statistics():
    for kwargs in ({"regime": "finetune"}, {"regime": "linear-probe", "frozen_norm": "train"}):
        model = build("vgg-mini", "image-only", 0, **kwargs).train()
        mean = model.network.features[1].running_mean.clone()
        with torch.no_grad():
            model(torch.randn(4, 3, 32, 32) + 2)
        assert not torch.equal(mean, model.network.features[1].running_mean), kwargs
