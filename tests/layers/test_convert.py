"""convert(): chosen convs of unmodified torchvision models become hybrid without changing the function."""
from __future__ import annotations

import copy
import threading

import pytest
import torch
import torchvision
from torch import nn

from covfuse.layers import CovariateModel, HybridConv2d, convert
from covfuse.layers.convert import conv_names, resolve_layers
from covfuse.layers.hybrid import hybrid_layers
from covfuse.layers.context import current_covariates


def _eval_double(model: nn.Module) -> nn.Module:
    return model.double().eval()


@pytest.mark.parametrize("builder", [torchvision.models.vgg11_bn, torchvision.models.resnet18])
@pytest.mark.parametrize("layers", ["first", "last", "all"])
def test_convert_preserves_torchvision_models_for_any_covariates(builder, layers):
    torch.manual_seed(0)
    original = _eval_double(builder(weights=None, num_classes=3))
    converted = convert(copy.deepcopy(original), layers, num_covariates=3)
    expected_count = {"first": 1, "last": 1, "all": len(conv_names(original))}[layers]
    assert len(hybrid_layers(converted)) == expected_count
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want = original(x)
        for c in (torch.randn(2, 3, dtype=torch.float64), torch.randint(0, 2, (2, 3)).double()):
            torch.testing.assert_close(converted(x, c), want, rtol=1e-10, atol=1e-10)
        # Once the covariate weights are non-zero the covariates change the output (and zeros still do not).
        for _, layer in hybrid_layers(converted):
            layer.covariate_weight.normal_(0, 0.5)
        c = torch.tensor([[1.0, 0, 1], [0, 0, 0]], dtype=torch.float64)
        got = converted(x, c)
        torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)
        assert (got[0] - want[0]).abs().max() > 1e-6


def test_convert_keeps_module_names_so_original_state_dict_loads():
    torch.manual_seed(1)
    model = torchvision.models.vgg11_bn(weights=None)
    state = copy.deepcopy(model.state_dict())
    converted = convert(model, ["features.0", "features.4"], num_covariates=2)
    assert isinstance(converted.model.features[0], HybridConv2d)
    assert isinstance(converted.model.features[4], HybridConv2d)
    missing, unexpected = converted.model.load_state_dict(state, strict=False)
    assert unexpected == []
    assert sorted(missing) == [
        f"features.{i}.covariate_{p}" for i in (0, 4) for p in ("bias", "weight")
    ]


def test_convert_inside_sequential_with_indices_and_names():
    torch.manual_seed(2)
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()), nn.Conv2d(4, 2, 1),
    )
    assert conv_names(seq) == ["0", "3.0", "4"]
    assert resolve_layers(seq, [0, -1]) == ["0", "4"]
    assert resolve_layers(seq, "3.0") == ["3.0"]
    reference = copy.deepcopy(seq).double().eval()
    converted = convert(seq, [1, "4"], num_covariates=1, init="kaiming").double().eval()
    x, c = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.tensor([[0.0], [1.0], [2.5]], dtype=torch.float64)
    # Independent reference: run the sequential by hand, applying each sample's kernel to the hybrid convs.
    outs = []
    for i in range(3):
        h = x[i : i + 1]
        for name, module in [("0", reference[0]), ("1", reference[1]), ("2", reference[2])]:
            h = module(h)
        hy = converted.model[3][0]
        h = nn.functional.conv2d(h, hy.weight + c[i, 0] * hy.covariate_weight[0], hy.bias + c[i, 0] * hy.covariate_bias[0])
        h = torch.relu(h)
        last = converted.model[4]
        h = nn.functional.conv2d(h, last.weight + c[i, 0] * last.covariate_weight[0], last.bias + c[i, 0] * last.covariate_bias[0])
        outs.append(h)
    torch.testing.assert_close(converted(x, c), torch.cat(outs))


def test_misspelt_layer_name_suggests_the_right_one():
    model = torchvision.models.vgg11_bn(weights=None)
    with pytest.raises(ValueError, match="did you mean 'features.4'"):
        convert(model, ["feature.4"], num_covariates=1)
    with pytest.raises(ValueError, match="out of range"):
        convert(model, [99], num_covariates=1)


def test_converted_layer_without_covariates_is_a_clear_error_and_nothing_leaks():
    torch.manual_seed(3)
    converted = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), "first", num_covariates=2)
    x = torch.randn(2, 3, 6, 6)
    converted(x, torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="needs covariates"):
        converted.model(x)  # the covariates of the previous call must not be reused
    with pytest.raises(RuntimeError, match="needs covariates"):
        current_covariates()


def test_converted_model_validates_covariates():
    converted = convert(nn.Sequential(nn.Conv2d(3, 4, 3)), "first", num_covariates=2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*got \(2, 3\)"):
        converted(torch.randn(2, 3, 6, 6), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        converted(torch.randn(2, 3, 6, 6), torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_concurrent_calls_in_threads_see_their_own_covariates():
    """DataParallel runs replicas in threads: each call must use its own covariates."""
    torch.manual_seed(4)
    converted = convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 3)), "all", 2, init="kaiming")
    inputs = [(torch.randn(4, 3, 10, 10), torch.randn(4, 2)) for _ in range(4)]
    with torch.no_grad():
        expected = [converted(x, c) for x, c in inputs]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        barrier.wait()
        with torch.no_grad():
            for _ in range(5):
                results[i] = converted(*inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        torch.testing.assert_close(results[i], want, rtol=0, atol=0)


def test_convert_returns_covariate_model_that_trains_covariate_weights():
    torch.manual_seed(5)
    converted = convert(torchvision.models.resnet18(weights=None, num_classes=1), "first", num_covariates=1)
    assert isinstance(converted, CovariateModel)
    optimizer = torch.optim.Adam(converted.parameters(), lr=1e-2)
    x, c = torch.randn(4, 3, 32, 32), torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    converted(x, c).sum().backward()
    optimizer.step()
    assert converted.model.conv1.covariate_weight.abs().sum() > 0
