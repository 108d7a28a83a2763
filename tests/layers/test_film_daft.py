"""FiLM and DAFT layers against hand-written references: identity at init, the formulas, the context."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from covfuse.layers.context import use_covariates
from covfuse.layers.daft import DAFT, DAFTAfter, bottleneck_width, daft
from covfuse.layers.film import FiLM, FiLMAfter, film


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 7), (4, 5, 6, 7), (3, 5, 4, 3, 2)])
@pytest.mark.parametrize("hidden", [None, 8])
def test_film_is_exactly_identity_at_init(shape, hidden):
    layer = FiLM(5, 3, hidden=hidden)
    x = torch.randn(shape)
    z = torch.randn(shape[0], 3) * 10
    assert torch.equal(layer(x, z), x)
    _perturb(layer)  # identity because of the zero init, not because z is ignored
    assert (layer(x, z) - x).abs().max() > 1e-3


def _perturb(module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)


@pytest.mark.parametrize("shape", [(2, 6, 3, 5), (2, 6, 4, 3, 2)])
def test_daft_is_exactly_identity_at_init(shape):
    torch.manual_seed(0)  # not the suite's global RNG state, which depends on test order
    layer = DAFT(6, 2)
    x = torch.randn(shape)
    z = torch.randn(shape[0], 2) * 10
    assert torch.equal(layer(x, z), x)
    _perturb(layer)
    with torch.no_grad():  # DAFT's bottleneck has one unit at 6 channels: keep its ReLU alive for any input
        layer.mlp[0].bias.fill_(20.0)
    assert (layer(x, z) - layer(x, torch.zeros_like(z))).abs().max() > 1e-3  # now z changes the output


def test_film_function_matches_per_sample_per_channel_loop():
    x, gamma, beta = torch.randn(3, 4, 5, 6), torch.randn(3, 4), torch.randn(3, 4)
    expected = torch.empty_like(x)
    for n in range(3):
        for c in range(4):
            expected[n, c] = gamma[n, c] * x[n, c] + beta[n, c]
    torch.testing.assert_close(film(x, gamma, beta), expected)


def test_film_layer_computes_one_plus_linear_gamma_and_beta():
    layer = FiLM(4, 3)
    _randomise(layer)
    x, z = torch.randn(2, 4, 5, 5), torch.randn(2, 3)
    w, b = layer.generator.weight, layer.generator.bias  # (2C, K), (2C,)
    out = layer(x, z)
    for n in range(2):
        params = w @ z[n] + b
        gamma, beta = 1 + params[:4], params[4:]
        torch.testing.assert_close(out[n], gamma[:, None, None] * x[n] + beta[:, None, None])


def test_daft_matches_hand_written_pool_concat_mlp():
    layer = DAFT(8, 3, reduction=2)
    _randomise(layer)
    x, z = torch.randn(2, 8, 4, 3), torch.randn(2, 3)
    l1, l2 = layer.mlp[0], layer.mlp[2]
    out = layer(x, z)
    for n in range(2):
        pooled = torch.stack([x[n, c].sum() / x[n, c].numel() for c in range(8)])
        h = torch.relu(l1.weight @ torch.cat([pooled, z[n]]) + l1.bias)
        a = l2.weight @ h + l2.bias
        torch.testing.assert_close(out[n], (1 + a[:8])[:, None, None] * x[n] + a[8:, None, None])
    torch.testing.assert_close(daft(x, z, layer.mlp), out)


def test_daft_bottleneck_follows_reduction():
    assert bottleneck_width(64, 3, 7) == 9
    assert bottleneck_width(2, 1, 7) == 1
    assert DAFT(64, 3).mlp[0].out_features == 9
    with pytest.raises(ValueError):
        bottleneck_width(4, 1, 0)


def test_wrappers_apply_module_then_layer_with_context_covariates():
    bn = nn.BatchNorm2d(4).eval()
    wrapped = FiLMAfter(bn, 4, 2)
    _randomise(wrapped.film)
    x, z = torch.randn(3, 4, 5, 5), torch.randn(3, 2)
    with use_covariates(z):
        out = wrapped(x)
    torch.testing.assert_close(out, wrapped.film(bn(x), z))

    pool = nn.MaxPool2d(2)
    wrapped_daft = DAFTAfter(pool, 4, 2)
    _randomise(wrapped_daft.daft)
    with use_covariates(z):
        out = wrapped_daft(x)
    torch.testing.assert_close(out, wrapped_daft.daft(pool(x), z))


@pytest.mark.parametrize("make", [lambda: FiLMAfter(nn.Identity(), 4, 2), lambda: DAFTAfter(nn.Identity(), 4, 2)])
def test_wrappers_without_covariates_raise_clear_error(make):
    with pytest.raises(RuntimeError, match="needs covariates"):
        make()(torch.randn(2, 4, 3, 3))


def test_zero_init_still_learns_one_step_changes_the_output():
    for layer in (FiLM(4, 2), DAFT(4, 2)):
        x, z = torch.randn(3, 4, 5, 5), torch.randn(3, 2)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        (layer(x, z) * torch.randn_like(x)).sum().backward()
        opt.step()
        assert not torch.allclose(layer(x, z), x)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="expects input"):
        FiLM(4, 2)(torch.randn(2, 3, 5), torch.randn(2, 2))
    with pytest.raises(ValueError, match="shape"):
        FiLM(4, 2)(torch.randn(2, 4, 5), torch.randn(2, 3))
    with pytest.raises(ValueError, match="expects input"):
        DAFT(4, 2)(torch.randn(2, 5, 5), torch.randn(2, 2))
    with pytest.raises(ValueError):
        FiLM(0, 2)
