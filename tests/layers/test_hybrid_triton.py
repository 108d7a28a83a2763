"""The `triton` and `unfold` hybrid back-ends against the per-sample loop in float32: 2D and 3D,
stride, padding, dilation, groups, bias, K=1..8, binary and continuous covariates, outputs and every
gradient. The Triton kernels run on Triton's CPU interpreter (TRITON_INTERPRET=1), which follows the
same program semantics as the GPU, so CI checks them without a GPU."""
from __future__ import annotations

import itertools
import zlib

import pytest
import torch

from covfuse.layers import HybridConv1d, HybridConv2d, HybridConv3d, hybrid_conv
from covfuse.layers import hybrid_functional, hybrid_triton

CLASSES = {1: HybridConv1d, 2: HybridConv2d, 3: HybridConv3d}
SPATIAL = {1: (11,), 2: (9, 8), 3: (4, 5, 4)}
OPTIONS = {
    "plain": dict(),
    "stride2-pad1-nobias": dict(stride=2, padding=1, bias=False),
    "same-dilation2": dict(padding="same", dilation=2),
    "groups2": dict(groups=2, padding=1),
    "all": dict(stride=(2, 1, 2), padding=2, dilation=2, groups=2),
}
# every (dims, option, kind) case gets one K, so K=1..8 are all covered without a 160-case product
CASES = [(dims, option, kind, 1 + i % 8) for i, (dims, option, kind) in
         enumerate(itertools.product([2, 3], OPTIONS, ["binary", "continuous"]))]


@pytest.fixture
def interpreter():
    """Triton's CPU interpreter, switched on for the whole session in conftest.py (Triton reads it on import)."""
    pytest.importorskip("triton")  # ships with torch's Linux builds; the unfold tests run without it
    assert hybrid_triton.interpreting() and hybrid_triton.available(torch.device("cpu"))


def _options(option: str, dims: int) -> dict:
    opts = dict(OPTIONS[option])
    if isinstance(opts.get("stride"), tuple):
        opts["stride"] = opts["stride"][-dims:]
    return opts


def loop_reference(layer, x, c):
    """Written independently of covfuse: each sample's kernel built explicitly, convolved alone."""
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[x.dim() - 2]
    outs = []
    for i in range(x.shape[0]):
        w = layer.weight + sum(c[i, j] * layer.covariate_weight[j] for j in range(c.shape[1]))
        b = None if layer.bias is None else layer.bias + sum(c[i, j] * layer.covariate_bias[j] for j in range(c.shape[1]))
        outs.append(conv(x[i : i + 1], w, b, layer.stride, layer.padding, layer.dilation, layer.groups))
    return torch.cat(outs)


def _check(backend: str, dims: int, opts: dict, kind: str, k: int, n: int = 4, cin: int = 4, cout: int = 6,
           kernel: int = 3, x_format=None):
    torch.manual_seed(zlib.crc32(repr((backend, dims, sorted(opts.items()), kind, k)).encode()))
    layer = CLASSES[dims](cin, cout, kernel, k, backend=backend, covariate_init="kaiming", **opts)
    x = torch.randn(n, cin, *SPATIAL[dims])
    if x_format is not None:
        x = x.contiguous(memory_format=x_format)
    x.requires_grad_()
    # binary rows repeat (the pattern path of `triton` shares one kernel per row); continuous do not
    c = torch.randint(0, 2, (n, k)).float() if kind == "binary" else torch.randn(n, k)
    out = layer(x, c)
    grad_out = torch.randn_like(out)
    params = [p for p in (layer.weight, layer.covariate_weight, layer.bias, layer.covariate_bias) if p is not None]
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    ref = loop_reference(layer, x, c)
    ref_grads = torch.autograd.grad(ref, [x, *params], grad_out)
    assert ref.abs().max() > 0.1  # non-trivial weights: a wrong tap or sample would show
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for name, got, want in zip(["x", "weight", "covariate_weight", "bias", "covariate_bias"], grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dims,option,kind,k", CASES)
def test_triton_matches_the_loop(interpreter, dims, option, kind, k):
    _check("triton", dims, _options(option, dims), kind, k)


@pytest.mark.parametrize("dims,option,kind,k", CASES)
def test_unfold_matches_the_loop(dims, option, kind, k):
    _check("unfold", dims, _options(option, dims), kind, k)


@pytest.mark.parametrize("backend", ["triton", "unfold"])
def test_1d_even_kernel_same_padding_and_channels_last(interpreter, backend):
    """'same' with an even kernel pads one extra on the far side (torch's rule); NHWC input needs no copy."""
    _check(backend, 1, dict(padding="same"), "continuous", 2, kernel=4)
    _check(backend, 2, dict(padding="same", dilation=(1, 3)), "binary", 3, kernel=2)
    _check(backend, 2, dict(padding=1), "continuous", 3, x_format=torch.channels_last)


def test_triton_weight_gradient_split_over_positions(interpreter, monkeypatch):
    """Split-K: with 32 positions per program a 9x8 map is summed by 3 programs per sample, atomically."""
    monkeypatch.setattr(hybrid_triton, "WGRAD_CHUNK", 32)
    _check("triton", 2, dict(padding=1), "continuous", 2)
    _check("triton", 3, dict(padding=1, groups=2), "binary", 3)


def test_triton_rows_share_one_kernel_per_pattern(interpreter):
    """With distinct rows given, weights are formed per pattern and each sample indexes its row's kernel."""
    torch.manual_seed(3)
    x = torch.randn(6, 4, 7, 7, requires_grad=True)
    c = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]])
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    cw = torch.randn(2, 5, 4, 3, 3, requires_grad=True)
    b, cb = torch.randn(5, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    kwargs = dict(stride=1, padding=1, dilation=1, groups=1)
    rows = hybrid_functional.unique_rows(c)
    got = hybrid_functional._triton(x, c, w, cw, b, cb, torch.nn.functional.conv2d, kwargs, rows=rows)
    want = hybrid_conv(x, c, w, cw, b, cb, 1, 1, 1, 1, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(want)
    for a, r in zip(torch.autograd.grad(got, [x, w, cw, b, cb], g), torch.autograd.grad(want, [x, w, cw, b, cb], g)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def test_triton_is_unavailable_on_cpu_without_the_interpreter(monkeypatch):
    assert "triton" not in hybrid_functional.available_backends(torch.device("cpu"))  # even interpreted
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not hybrid_triton.available(torch.device("cpu"))
    layer = HybridConv2d(3, 4, 3, 2, backend="triton")
    with pytest.raises(RuntimeError, match="CUDA"):
        layer(torch.randn(2, 3, 5, 5), torch.randn(2, 2))


def test_float64_is_refused_and_never_a_candidate(interpreter, monkeypatch):
    """The kernels accumulate in float32 through tl.dot: float64 gave wrong outputs (not a rounding
    difference), so the back-end refuses it and `auto` does not time it for float64 models on CUDA."""
    layer = HybridConv2d(3, 4, 3, 2, padding=1, backend="triton", covariate_init="kaiming").double()
    x, c = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        layer(x, c)
    monkeypatch.setattr(hybrid_triton, "_HAVE_TRITON", True)
    cuda = torch.device("cuda")
    assert "triton" in hybrid_functional.auto_candidates(cuda, 8, 8, dtype=torch.float32)
    assert "triton" not in hybrid_functional.auto_candidates(cuda, 8, 8, dtype=torch.float64)
