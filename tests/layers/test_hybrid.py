"""HybridConvNd against an independent per-sample reference, in outputs and gradients (float64)."""
from __future__ import annotations

import io
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covfuse.layers import HybridConv1d, HybridConv2d, HybridConv3d, hybrid_conv

CLASSES = {1: HybridConv1d, 2: HybridConv2d, 3: HybridConv3d}
SPATIAL = {1: (11,), 2: (9, 8), 3: (6, 5, 7)}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
OPTIONS = {
    "plain": dict(),
    "stride2-pad1-nobias": dict(stride=2, padding=1, bias=False),
    "same-dilation2": dict(padding="same", dilation=2),
    "groups2": dict(groups=2, padding=1),
    "all": dict(stride=2, padding=2, dilation=2, groups=2),
}
BACKENDS = ["reference", "expand", "grouped", "pattern", "unfold", "auto"]  # triton: tests/layers/test_hybrid_triton.py


def per_sample_reference(layer, x, c):
    """Written independently of covfuse: build each sample's kernel explicitly and convolve it alone."""
    outs = []
    for i in range(x.shape[0]):
        w = layer.weight.clone()
        b = None if layer.bias is None else layer.bias.clone()
        for j in range(c.shape[1]):
            w = w + c[i, j] * layer.covariate_weight[j]
            if b is not None:
                b = b + c[i, j] * layer.covariate_bias[j]
        pad = layer.padding
        outs.append(CONV[x.dim() - 2](x[i : i + 1], w, b, layer.stride, pad, layer.dilation, layer.groups))
    return torch.cat(outs)


def make_covariates(kind: str, n: int, k: int) -> torch.Tensor:
    if kind == "binary":
        return torch.randint(0, 2, (n, k), dtype=torch.float64)
    return torch.randn(n, k, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_backend_matches_per_sample_reference(backend, dims, option, k, kind):
    torch.manual_seed(zlib.crc32(repr((backend, dims, option, k, kind)).encode()))
    layer = CLASSES[dims](4, 6, 3, k, backend=backend, covariate_init="kaiming", **OPTIONS[option]).double()
    x = torch.randn(5, 4, *SPATIAL[dims], dtype=torch.float64, requires_grad=True)
    c = make_covariates(kind, 5, k)

    out = layer(x, c)
    grad_out = torch.randn_like(out)
    params = [p for p in (layer.weight, layer.covariate_weight, layer.bias, layer.covariate_bias) if p is not None]
    grads = torch.autograd.grad(out, [x, *params], grad_out)

    ref = per_sample_reference(layer, x, c)
    ref_grads = torch.autograd.grad(ref, [x, *params], grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_gradient_with_respect_to_covariates(backend, kind):
    """Attribution to covariates: d out / d covariates (and the parameter gradients in the same
    pass) equal the per-sample loop's, for every back-end, including repeated binary rows where
    `pattern` would otherwise group samples with torch.unique (which has no derivative)."""
    torch.manual_seed(zlib.crc32(repr((backend, kind)).encode()))
    layer = HybridConv2d(3, 4, 3, 2, padding=1, backend=backend, covariate_init="kaiming").double()
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    c = make_covariates(kind, 8, 2).requires_grad_()
    inputs = [c, x, layer.weight, layer.covariate_weight, layer.bias, layer.covariate_bias]
    grad_out = torch.randn(8, 4, 6, 6, dtype=torch.float64)
    got = torch.autograd.grad(layer(x, c), inputs, grad_out)
    want = torch.autograd.grad(per_sample_reference(layer, x, c), inputs, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_covariate_gradient_through_a_converted_model():
    """The same through convert(..., "all") with `auto`: a model's output differentiated w.r.t.
    binary covariates (Grad x input on covariates) equals the per-sample loop back-end's."""
    import copy

    from covfuse.layers import convert

    torch.manual_seed(8)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3)).double()
    auto = convert(copy.deepcopy(base), "all", 2, init="zeros")
    for m in auto.modules():
        if isinstance(m, HybridConv2d):
            nn.init.normal_(m.covariate_weight)
    ref = convert(base, "all", 2, backend="reference")
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(6, 3, 7, 7, dtype=torch.float64)
    c = torch.tensor([[0.0, 1.0], [1.0, 1.0]] * 3, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(auto(x, c).sum(), c)[0]
    want = torch.autograd.grad(ref(x, c).sum(), c)[0]
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_pattern_with_repeated_rows_and_single_pattern():
    torch.manual_seed(2)
    layer = HybridConv2d(3, 5, 3, 2, padding=1, backend="pattern", covariate_init="kaiming").double()
    x = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    for c in (torch.tensor([[0.0, 1.0], [1.0, 1.0]] * 4, dtype=torch.float64), torch.ones(8, 2, dtype=torch.float64)):
        torch.testing.assert_close(layer(x, c), per_sample_reference(layer, x, c))


def test_functional_form_equals_module():
    torch.manual_seed(3)
    layer = HybridConv2d(3, 4, 3, 2, stride=2, covariate_init="kaiming")
    x, c = torch.randn(4, 3, 9, 9), torch.randint(0, 2, (4, 2)).float()
    direct = hybrid_conv(x, c, layer.weight, layer.covariate_weight, layer.bias, layer.covariate_bias, stride=2)
    torch.testing.assert_close(layer(x, c), direct)


def test_parameters_are_registered_and_shaped_per_contract():
    layer = HybridConv2d(6, 8, (3, 5), 3, groups=2)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "weight": (8, 3, 3, 5),
        "covariate_weight": (3, 8, 3, 3, 5),
        "bias": (8,),
        "covariate_bias": (3, 8),
    }
    no_bias = HybridConv3d(2, 4, 3, 1, bias=False)
    assert no_bias.bias is None and no_bias.covariate_bias is None
    assert {n for n, _ in no_bias.named_parameters()} == {"weight", "covariate_weight"}


def test_default_init_is_zero_covariate_terms_and_conv_like_weight():
    torch.manual_seed(0)
    layer = HybridConv2d(16, 32, 3, 2)
    assert torch.count_nonzero(layer.covariate_weight) == 0 and torch.count_nonzero(layer.covariate_bias) == 0
    bound = 1 / (16 * 9) ** 0.5  # kaiming_uniform(a=sqrt(5)) bound, as nn.Conv2d
    assert layer.weight.abs().max() <= bound and layer.weight.std() > bound / 3
    kaiming = HybridConv2d(16, 32, 3, 2, covariate_init="kaiming")
    assert torch.count_nonzero(kaiming.covariate_weight) == kaiming.covariate_weight.numel()


def test_state_dict_round_trip():
    torch.manual_seed(4)
    layer = HybridConv2d(3, 4, 3, 2, covariate_init="kaiming")
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"weight", "covariate_weight", "bias", "covariate_bias"}
    fresh = HybridConv2d(3, 4, 3, 2)
    fresh.load_state_dict(state)
    x, c = torch.randn(2, 3, 6, 6), torch.randn(2, 2)
    torch.testing.assert_close(fresh(x, c), layer(x, c), rtol=0, atol=0)


def test_to_moves_every_parameter():
    layer = HybridConv3d(2, 3, 3, 2).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert len(list(layer.parameters())) == 4
    meta = HybridConv2d(2, 3, 3, 2).to("meta")
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_one_optimizer_step_changes_covariate_weight():
    torch.manual_seed(5)
    layer = HybridConv2d(3, 4, 3, 2, padding=1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, c = torch.randn(4, 3, 6, 6), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    before = layer.covariate_weight.detach().clone()
    layer(x, c).square().mean().backward()
    optimizer.step()
    assert not torch.equal(layer.covariate_weight, before)
    assert torch.count_nonzero(layer.covariate_weight[0]) > 0 and torch.count_nonzero(layer.covariate_weight[1]) > 0


@pytest.mark.parametrize(
    "covariates, message",
    [
        (torch.zeros(4), r"shape \(3, 2\).*got \(4,\)"),
        (torch.zeros(3, 3), r"shape \(3, 2\).*got \(3, 3\)"),
        (torch.zeros(2, 2), r"shape \(3, 2\).*got \(2, 2\)"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [0.0, 0.0]]), "NaN"),
        (torch.tensor([[0.0, 1.0], [float("inf"), 1.0], [0.0, 0.0]]), "infinite"),
        (torch.zeros(3, 2, dtype=torch.long), "float"),
        (torch.zeros(3, 2, device="meta"), "meta"),
    ],
)
def test_bad_covariates_raise_value_error_naming_shapes(covariates, message):
    layer = HybridConv2d(3, 4, 3, 2)
    with pytest.raises(ValueError, match=message):
        layer(torch.zeros(3, 3, 6, 6), covariates)


def test_bad_input_and_options_raise():
    with pytest.raises(ValueError, match=r"expects input \(N, 3"):
        HybridConv2d(3, 4, 3, 1)(torch.zeros(2, 5, 6, 6), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="backend"):
        HybridConv2d(3, 4, 3, 1, backend="fast")
    with pytest.raises(ValueError, match="strided"):
        HybridConv2d(3, 4, 3, 1, stride=2, padding="same")
    with pytest.raises(ValueError, match="divisible"):
        HybridConv2d(3, 4, 3, 1, groups=2)
    with pytest.raises(ValueError, match="kernel_size"):
        HybridConv2d(3, 4, (3, 3, 3), 1)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_from_conv_equals_the_conv_for_any_covariates(dims):
    torch.manual_seed(6)
    conv = getattr(nn, f"Conv{dims}d")(4, 6, 3, stride=2, padding=1, dilation=1, groups=2).double()
    x = torch.randn(4, 4, *SPATIAL[dims], dtype=torch.float64)
    for backend in BACKENDS:
        layer = CLASSES[dims].from_conv(conv, 3, backend=backend)
        assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
        for c in (torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4, 3)).double()):
            torch.testing.assert_close(layer(x, c), conv(x), rtol=1e-12, atol=1e-12)
        # The equality above is not because covariates are ignored: with non-zero covariate weights the
        # output follows the per-sample reference, differs from the conv, and equals it only for c = 0.
        with torch.no_grad():
            layer.covariate_weight.normal_()
            layer.covariate_bias.normal_()
        c = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 1, 1], [2, -1, 0.5]], dtype=torch.float64)
        out = layer(x, c)
        torch.testing.assert_close(out, per_sample_reference(layer, x, c))
        torch.testing.assert_close(out[1], conv(x)[1], rtol=1e-12, atol=1e-12)
        for i in (0, 2, 3):
            assert (out[i] - conv(x)[i]).abs().max() > 1e-3, (backend, i)


def test_from_conv_rejects_the_wrong_conv_type():
    with pytest.raises(TypeError, match="Conv2d"):
        HybridConv2d.from_conv(nn.Conv1d(2, 2, 3), 1)


def test_extra_repr_names_the_options():
    text = repr(HybridConv2d(3, 8, 3, 2, padding=1, groups=1, bias=False, backend="pattern"))
    assert "num_covariates=2" in text and "padding=(1, 1)" in text and "bias=False" in text and "pattern" in text


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_autocast_and_channels_last_inputs(backend):
    torch.manual_seed(7)
    layer = HybridConv2d(3, 4, 3, 2, padding=1, backend=backend, covariate_init="kaiming")
    x, c = torch.randn(6, 3, 8, 8), torch.randint(0, 2, (6, 2)).float()
    want = per_sample_reference(layer, x, c)
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last), c), want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x, c)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    got.float().sum().backward()
    for name in ("covariate_weight", "covariate_bias"):  # the covariate parameters receive gradient
        grad = getattr(layer, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
