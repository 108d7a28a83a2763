"""hyper, cond-norm, tab-attention, duanmu and mlp-concat layers against references written here (float64).

Each reference is the method's formula evaluated sample by sample with plain tensor operations,
written without covfuse's code; outputs and gradients (input, parameters, covariates) must agree,
in 2D and 3D.
"""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covfuse.layers import (
    ConditionalNorm,
    DuanmuAttention,
    DuanmuGate,
    HybridConv2d,
    HybridConv3d,
    HyperConv1d,
    HyperConv2d,
    HyperConv3d,
    MLPCatHead,
    TabAttention,
    use_covariates,
)

HYPER = {1: HyperConv1d, 2: HyperConv2d, 3: HyperConv3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}


def seed(*key) -> None:
    torch.manual_seed(zlib.crc32(repr(key).encode()))


def randomize(module: nn.Module) -> None:
    """Non-zero values everywhere, so zero initialisations cannot hide a wrong term."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)


def covariates(kind: str, n: int, k: int) -> torch.Tensor:
    if kind == "binary":
        c = torch.randint(0, 2, (n, k), dtype=torch.float64)
        c[0] = c[1]  # at least one repeated row
        return c
    return torch.randn(n, k, dtype=torch.float64)


def check_grads(out, ref, tensors) -> None:
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, tensors, g, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(ref, tensors, g, allow_unused=True)
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ---- hyper ----------------------------------------------------------------------------------------

def hyper_reference(layer, x, z):
    """Sample i: h = MLP(z_i) by hand; kernel W_0 + sum_e h_e W_e; conv of x_i alone."""
    linears = [m for m in layer.embed if isinstance(m, nn.Linear)]
    outs = []
    for i in range(x.shape[0]):
        h = z[i]
        for lin in linears:
            h = torch.clamp(lin.weight @ h + lin.bias, min=0)
        w, b = layer.weight, layer.bias
        for e in range(h.shape[0]):
            w = w + h[e] * layer.hyper_weight[e]
            if b is not None:
                b = b + h[e] * layer.hyper_bias[e]
        outs.append(CONV[x.dim() - 2](x[i:i + 1], w, b, layer.stride, layer.padding, layer.dilation, layer.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("backend", ["reference", "expand", "grouped", "pattern", "auto"])
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kind", ["binary", "continuous"])
@pytest.mark.parametrize("depth,options", [(1, {}), (2, dict(stride=2, padding=1, groups=2, bias=False))])
def test_hyper_matches_per_sample_reference(backend, dims, kind, depth, options):
    seed("hyper", backend, dims, kind, depth)
    layer = HYPER[dims](4, 6, 3, 3, backend=backend, width=5, depth=depth, **options).double()
    randomize(layer)
    x = torch.randn(6, 4, *SPATIAL[dims], dtype=torch.float64, requires_grad=True)
    z = covariates(kind, 6, 3)
    out, ref = layer(x, z), hyper_reference(layer, x, z)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    check_grads(out, ref, [x, *layer.parameters()])


@pytest.mark.parametrize("backend", ["expand", "grouped", "pattern", "auto"])
def test_hyper_gradients_reach_each_samples_covariates(backend):
    seed("hyper-z", backend)
    layer = HyperConv2d(3, 4, 3, 2, padding=1, backend=backend, width=4).double()
    randomize(layer)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    z = covariates("binary", 5, 2).requires_grad_(True)
    out, ref = layer(x, z), hyper_reference(layer, x, z)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    check_grads(out, ref, [z])


def test_hyper_pairs_each_sample_with_its_own_kernel():
    """Permuting the batch permutes the output: HyperFusion's 3D loop (sample i with kernel i+1) fails this."""
    seed("perm")
    layer = HyperConv3d(2, 3, 3, 2, padding=1, backend="grouped").double()
    randomize(layer)
    x, z = torch.randn(4, 2, 4, 4, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(layer(x[perm], z[perm]), layer(x, z)[perm])
    shifted = torch.cat([CONV[3](x[i:i + 1], layer.weight + torch.einsum(
        "e,e...->...", torch.relu(layer.embed[0](z[i + 1])), layer.hyper_weight), None, 1, 1) for i in range(3)])
    assert not torch.allclose(shifted, layer(x, z)[:3].detach() - layer.bias.view(1, -1, 1, 1, 1))


@pytest.mark.parametrize("dims", [2, 3])
def test_hybrid_is_the_linear_special_case_of_hyper(dims):
    """depth=0: the code is z itself and W_0 + sum_j z_j W_j is the hybrid kernel."""
    seed("special", dims)
    hyper = HYPER[dims](3, 5, 3, 2, padding=1, depth=0).double()
    randomize(hyper)
    hybrid = (HybridConv2d if dims == 2 else HybridConv3d)(3, 5, 3, 2, padding=1).double()
    with torch.no_grad():
        hybrid.weight.copy_(hyper.weight)
        hybrid.bias.copy_(hyper.bias)
        hybrid.covariate_weight.copy_(hyper.hyper_weight)
        hybrid.covariate_bias.copy_(hyper.hyper_bias)
    x, z = torch.randn(4, 3, *SPATIAL[dims][:2], *((5,) if dims == 3 else ()), dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(hyper(x, z), hybrid(x, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_hyper_from_conv_starts_as_the_conv_and_learns(dims):
    seed("from_conv", dims)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(3, 4, 3, padding=1).double()
    layer = HYPER[dims].from_conv(conv, 2, width=4)
    x, z = torch.randn(3, 3, *(5,) * dims, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(layer(x, z), conv(x), rtol=0, atol=1e-12)
    layer(x, z).square().sum().backward()
    assert layer.hyper_weight.grad.abs().sum() > 0


def test_hyper_with_the_reference_embedding_trains_on_a_batch_of_one():
    """HyperFusion's embedding (Linear-BatchNorm1d-PReLU) in training mode: one sample has no batch variance,
    so it is normalised with the running statistics (what eval mode does) instead of raising; a batch of
    several is torch's BatchNorm1d unchanged."""
    seed("hyper-one")
    layer = HyperConv2d(3, 4, 3, 2, padding=1, width=4, embedding="reference").double()
    randomize(layer)
    norm = layer.embed[1]
    x, z = torch.randn(6, 3, 5, 5, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    layer.train()
    layer(x, z)  # running statistics from a batch of six
    plain = nn.BatchNorm1d(4).double().train()
    plain.load_state_dict(norm.state_dict())
    h = layer.embed[0](z)
    running = norm.running_mean.clone(), norm.running_var.clone()
    torch.testing.assert_close(norm(h), plain(h))  # several samples: BatchNorm1d itself
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        plain(h[:1])
    norm.running_mean.copy_(running[0])
    norm.running_var.copy_(running[1])
    one = layer(x[:1], z[:1])
    one.sum().backward()  # trains
    assert layer.hyper_weight.grad is not None
    torch.testing.assert_close(norm.running_mean, running[0], rtol=0, atol=0)  # left as they are
    layer.eval()
    torch.testing.assert_close(one, layer(x[:1], z[:1]))


# ---- conditional norm -----------------------------------------------------------------------------

def cond_norm_reference(cn: ConditionalNorm, x, z, running: tuple | None):
    """(gamma + dgamma(z)) * (x - mean) / sqrt(var + eps) + beta + dbeta(z); stats per the norm's kind;
    dgamma and dbeta from two separate MLPs (dbeta's output layer without bias)."""
    def mlp(generator):
        lin = [m for m in generator.modules() if isinstance(m, nn.Linear)]
        h = z
        for i, m in enumerate(lin):
            h = h @ m.weight.T + (m.bias if m.bias is not None else 0)
            if i < len(lin) - 1:
                h = torch.clamp(h, min=0)
        return h
    c = x.shape[1]
    dgamma, dbeta = mlp(cn.gamma), mlp(cn.beta)
    dims = tuple(range(2, x.dim()))
    if running is not None:
        mean, var = running
        mean, var = mean.view(1, c, *(1,) * len(dims)), var.view(1, c, *(1,) * len(dims))
    elif isinstance(cn.norm, nn.modules.instancenorm._InstanceNorm):
        mean, var = x.mean(dims, keepdim=True), x.var(dims, keepdim=True, unbiased=False)
    else:
        mean, var = x.mean((0, *dims), keepdim=True), x.var((0, *dims), keepdim=True, unbiased=False)
    gamma = dgamma + (cn.norm.weight if cn.norm.weight is not None else 1)
    beta = dbeta + (cn.norm.bias if cn.norm.bias is not None else 0)
    shape = (x.shape[0], c, *(1,) * len(dims))
    return gamma.view(shape) * (x - mean) / torch.sqrt(var + cn.norm.eps) + beta.view(shape)


NORMS = {
    "batch2d": lambda: nn.BatchNorm2d(5), "batch3d": lambda: nn.BatchNorm3d(5),
    "instance2d": lambda: nn.InstanceNorm2d(5, affine=True), "instance3d": lambda: nn.InstanceNorm3d(5),
}


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("hidden", [None, 4])
def test_conditional_norm_matches_formula_and_updates_statistics(norm, hidden):
    seed("cn", norm, hidden)
    base = NORMS[norm]().double()
    plain = NORMS[norm]().double()
    cn = ConditionalNorm(base, 3, hidden=hidden).double()
    randomize(cn)
    with torch.no_grad():
        plain.load_state_dict(base.state_dict()) if plain.weight is not None else None
    dims = 2 if "2d" in norm else 3
    x = torch.randn(4, 5, *(4,) * dims, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out, ref = cn(x, z), cond_norm_reference(cn, x, z, None)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    check_grads(out, ref, [x, z, *cn.parameters()])
    plain(x.detach())  # the same running-statistics update as the norm it wraps
    for a, b in zip(cn.norm.buffers(), plain.buffers()):
        torch.testing.assert_close(a, b)
    if "batch" in norm:  # eval: the running statistics
        cn.eval()
        ref = cond_norm_reference(cn, x, z, (cn.norm.running_mean, cn.norm.running_var))
        torch.testing.assert_close(cn(x, z), ref, rtol=1e-9, atol=1e-10)


def test_conditional_norm_starts_as_its_norm():
    bn = nn.BatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.normal_()
    twin = nn.BatchNorm2d(4).double()
    twin.load_state_dict(bn.state_dict())
    cn = ConditionalNorm(bn, 2)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(cn(x, torch.randn(3, 2, dtype=torch.float64)), twin(x), rtol=0, atol=1e-14)


# ---- tab attention --------------------------------------------------------------------------------

def tab_attention_reference(att: TabAttention, x, z, gain):
    """CBAM's channel then spatial gate with the tabular terms, written out with plain operations."""
    def mlp(seq, v):
        return torch.clamp(v @ seq[0].weight.T + seq[0].bias, min=0) @ seq[2].weight.T + seq[2].bias
    dims = tuple(range(2, x.dim()))
    n, c = x.shape[:2]
    avg = x.mean(dims)
    mx = x.reshape(n, c, -1).max(dim=2).values
    raw = mlp(att.mlp, avg) + mlp(att.mlp, mx) + mlp(att.mlp, mlp(att.tab_channel, z))
    x1 = x * (gain / (1 + torch.exp(-raw))).view(n, c, *(1,) * len(dims))
    grid, pad = att.grid, (att.spatial.kernel_size[-1] - 1) // 2
    if len(dims) == 3:  # volumes: a 2D tabular map and a (1, k, k) kernel, slice by slice along depth
        tab = mlp(att.tab_spatial, z).view(n, 1, 1, grid, grid).expand(-1, -1, x.shape[2], -1, -1)
        padding = (0, pad, pad)
        assert att.spatial.kernel_size[0] == 1
    else:
        tab, padding = mlp(att.tab_spatial, z).view(n, 1, grid, grid), pad
    maps = torch.cat([x1.max(dim=1, keepdim=True).values, x1.mean(1, keepdim=True), tab], 1)
    s = CONV[len(dims)](maps, att.spatial.weight, None, 1, padding)
    mean, var = s.mean(), s.var(unbiased=False)  # one channel, training mode
    s = (s - mean) / torch.sqrt(var + att.spatial_norm.eps) * att.spatial_norm.weight + att.spatial_norm.bias
    return x1 * gain / (1 + torch.exp(-s))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_tab_attention_matches_formula(dims, gain):
    seed("tab", dims, gain)
    att = TabAttention(6, 3, dims=dims, reduction=2, grid=4, kernel_size=3, gain=gain, init="reference").double()
    randomize(att)
    x = torch.randn(3, 6, *(4,) * dims, dtype=torch.float64, requires_grad=True)  # grid-sized map: no resizing
    z = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    out, ref = att(x, z), tab_attention_reference(att, x, z, gain)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    check_grads(out, ref, [x, z, *att.parameters()])


@pytest.mark.parametrize("dims", [2, 3])
def test_tab_attention_starts_as_identity_and_resizes_its_map(dims):
    seed("tab-id", dims)
    att = TabAttention(5, 2, dims=dims, grid=3).double()
    x = torch.randn(4, 5, *(6,) * dims, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(att(x, z), x, rtol=0, atol=1e-15)
    randomize(att)
    t = att.tab_map(z, (6,) * dims)
    assert t.shape == (4, 1, *(6,) * dims)
    small = att.tab_spatial(z).view(4, 1, 3, 3)
    # bilinear upsampling 3 -> 6 (align_corners=False) keeps the corner cell's value; on volumes every
    # depth slice gets the same 2D map
    torch.testing.assert_close(t[(..., *(0,) * dims)], small[..., 0, 0])
    if dims == 3:
        torch.testing.assert_close(t[:, :, 0], t[:, :, 5])


# ---- duanmu -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_duanmu_gates_match_the_chain_formula(dims, offset):
    seed("duanmu", dims, offset)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    stages = [conv(3, 4, 3, padding=1), conv(4, 6, 3, padding=1, stride=2), conv(6, 8, 3, padding=1)]
    attention = DuanmuAttention(2, [3, 4, 6], hidden=5, offset=offset, init="reference")
    net = nn.Sequential(*[DuanmuGate(s, attention, i) for i, s in enumerate(stages)]).double()
    randomize(net)
    x = torch.randn(3, 3, *(6,) * dims, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    with use_covariates(z):
        out = net(x)
    a = torch.clamp(z @ attention.base.weight.T, min=0)
    ref = x
    for linear, stage in zip(attention.maps, stages):
        a = a @ linear.weight.T
        ref = stage(ref * (offset + a).view(*a.shape, *(1,) * dims))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)
    check_grads(out, ref, [x, z, *net.parameters()])
    assert len(list(net.parameters())) == 6 + 1 + 3  # the chain is registered once


def test_duanmu_starts_as_identity():
    attention = DuanmuAttention(2, [3, 5])
    x, z = torch.randn(2, 3, 4, 4), torch.randn(2, 2)
    conv = nn.Conv2d(3, 5, 1)
    gate = DuanmuGate(conv, attention, 0)
    with use_covariates(z):
        torch.testing.assert_close(gate(x), conv(x), rtol=0, atol=0)
        assert all(torch.equal(f, torch.ones_like(f)) for f in attention(z))


# ---- mlp-concat ---------------------------------------------------------------------------------

def test_mlpcat_is_one_fc_on_features_and_relu_mlp_of_covariates():
    seed("mlpcat")
    image = nn.Linear(6, 2).double()
    head = MLPCatHead(6, 3, 2, hidden=4, image=image).double()
    f = torch.randn(5, 6, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(head(f, z), image(f), rtol=0, atol=0)  # starts as the image head
    randomize(head)
    fc_weight = torch.cat([head.image.weight, head.covariates.weight], dim=1)
    ref = torch.cat([f, torch.relu(z @ head.mlp.weight.T + head.mlp.bias)], 1) @ fc_weight.T + head.image.bias
    torch.testing.assert_close(head(f, z), ref, rtol=1e-12, atol=1e-12)
