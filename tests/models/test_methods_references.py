"""Each method against its authors' code, transcribed here (float64, weights copied across, non-zero).

The reference forwards below are written as the authors' code computes them (not with covfuse's
layers); each cites the file it transcribes. covfuse is run at the reference's placement with
``fusion_init="reference"`` where the reference's initialisation changes the function (a scale
predicted directly instead of ``1 + delta``, a plain sigmoid gate); every added parameter is then
randomised, so no zero initialisation can hide a wrong term. The last test permutes the batch for
every method: each sample's output must depend on its own covariates only.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covfuse.layers import ConditionalNorm, use_covariates
from covfuse.models import build

K = 3


def randomize_added(model, backbone: str, scale: float = 0.3) -> None:
    """Non-zero values in every parameter the method added (names absent from the image-only model)."""
    plain = set(build(backbone, "image-only", 0).state_dict())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in plain:
                p.copy_(torch.randn_like(p) * scale)


def volume(n: int = 4, side: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, side, side, side, dtype=torch.float64)


# ---- DAFT and FiLM: ai-med/DAFT daft/networks/vol_blocks.py, FilmBase.forward with location=3 ---------

def daft_reference_block(block, x, tab, aux, daft: bool):
    """FilmBase.forward (location 3): conv1, bn1 (affine=False), rescale_features, ReLU, conv2, bn2,
    + downsample(residual), ReLU. rescale_features: FilmBlock: aux(tab); DAFTBlock: aux([GAP(x) ⊕ tab]);
    split into (scale, shift), 'linear' activation: scale * x + shift. aux: bias-free Linear-ReLU-Linear."""
    residual = x
    out = block.conv1(x)
    out = F.batch_norm(out, None, None, None, None, True, 0.1, block.bn1.module.eps)  # affine off, batch stats
    squeeze = torch.cat([out.mean((2, 3, 4)), tab], 1) if daft else tab
    attention = F.linear(F.relu(F.linear(squeeze, aux[0].weight)), aux[2].weight)
    v_scale, v_shift = torch.split(attention, out.shape[1], dim=1)
    out = v_scale.view(*v_scale.shape, 1, 1, 1) * out + v_shift.view(*v_shift.shape, 1, 1, 1)
    out = F.relu(out)
    out = block.bn2(block.conv2(out))
    out = out + block.downsample(residual)
    return F.relu(out)


@pytest.mark.parametrize("method", ["daft", "film"])
def test_daft_and_film_equal_dafts_block_at_film_location_3(method):
    torch.manual_seed(0)
    model = build("resnet3d-compact", method, K, fusion_init="reference").double().train()
    randomize_added(model, "resnet3d-compact")
    block = model.network.layer4
    wrapped = block.bn1
    assert model.config[{"daft": "daft_layer", "film": "film_layers"}[method]] in ("layer4.bn1", ["layer4.bn1"])
    with torch.no_grad():  # the reference's bn1 has affine=False: unit scale, zero shift
        wrapped.module.weight.fill_(1), wrapped.module.bias.zero_()
    aux = wrapped.daft.mlp if method == "daft" else wrapped.film.generator
    # DAFT's training code: bottleneck int((4 * n_basefilters + K) / 7), 4 * n_basefilters = the block's in_channels
    assert aux[0].out_features == int((block.conv1.in_channels + K) / 7)
    assert aux[0].bias is None and aux[2].bias is None
    x = torch.randn(4, block.conv1.in_channels, 4, 4, 4, dtype=torch.float64)
    z = torch.randn(4, K, dtype=torch.float64)
    with use_covariates(z):
        out = block(x)
    ref = daft_reference_block(block, x, z, aux, daft=method == "daft")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


# ---- mlpcatmlp: ai-med/DAFT vol_networks.py ConcatHNNMCM.forward, width from daft/cli.py ----------

def test_mlpcatmlp_equals_concathnnmcm_with_the_training_codes_width():
    torch.manual_seed(1)
    model = build("resnet3d-compact", "mlpcatmlp", K, fusion_init="reference").double().eval()
    randomize_added(model, "resnet3d-compact")
    head = model.network.fc
    assert head.mlp.out_features == int((model.network.layer4.conv1.in_channels + K) / 7)  # bdim of daft/cli.py
    seen = {}
    model.network.fc.register_forward_pre_hook(lambda m, args: seen.update(f=args[0]))
    x, z = volume(), torch.randn(4, K, dtype=torch.float64)
    out = model(x, z)
    # out = fc(cat(global_pool(out), relu(mlp(tabular)))) with fc one Linear(F + bottleneck, n_outputs)
    fc_weight = torch.cat([head.image.weight, head.covariates.weight], 1)
    ref = F.linear(torch.cat([seen["f"], F.relu(F.linear(z, head.mlp.weight, head.mlp.bias))], 1), fc_weight, head.image.bias)
    torch.testing.assert_close(out, ref.squeeze(-1), rtol=1e-10, atol=1e-12)


# ---- duanmu: ai-med/DAFT vol_networks.py InteractiveHNN.forward ----------------------------------

def test_duanmu_equals_interactivehnn():
    torch.manual_seed(2)
    model = build("resnet3d-compact", "duanmu", K, fusion_init="reference").double().train()
    randomize_added(model, "resnet3d-compact")
    net = model.network
    chain = net.layer1.factor.chain
    assert chain.offset == 0
    x, z = volume(), torch.randn(4, K, dtype=torch.float64)
    seen = {}
    net.layer1.register_forward_pre_hook(lambda m, args: seen.update(stem=args[0].clone()))
    out = model(x, z)
    # attention = aux(tabular) (aux_base, ReLU, aux_1; no biases); out = out * attention before block1;
    # then attention = aux_s(attention) before every further block
    ref = seen["stem"]  # the backbone's own stem (the reference's conv1 + pool1)
    attention = F.linear(F.relu(F.linear(z, chain.base.weight)), chain.maps[0].weight)
    for s, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        if s:
            attention = F.linear(attention, chain.maps[s].weight)
        ref = stage.module(ref * attention.view(*attention.shape, 1, 1, 1))
    ref = net.fc(torch.flatten(net.avgpool(ref), 1)).squeeze(-1)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


# ---- hyper: daniel4725/HyperFusion models/Hyperfusion/hyper_base.py HyperConv3dLayer.forward -----------

def hyperfusion_reference(x, tab, embedding, weights_gen, bias_gen, shape, stride):
    """HyperNetwork.forward: emb = embedding(tab); weights = weights_gen(emb); biases = bias_gen(emb).
    HyperConv3dLayer.forward as written: sample 0 with its own kernel, then out[i + 1] = conv(x[i], kernel[i + 1])."""
    emb = embedding(tab)
    weights, biases = weights_gen(emb), bias_gen(emb)
    out0 = F.conv3d(x[0][None], weights[0].reshape(shape), biases[0], stride=stride, padding=0)
    out = torch.zeros([x.shape[0], *out0.shape[1:]], dtype=x.dtype)
    out[0] = out0
    for i, (w, b) in enumerate(zip(weights[1:], biases[1:])):
        out[i + 1] = F.conv3d(x[i][None], w.reshape(shape), b, stride=stride, padding=0)
    return out


def test_hyper_equals_hyperfusions_hyperconv3d_with_its_embedding():
    torch.manual_seed(3)
    model = build("resnet3d-compact", "hyper", K).double().train()
    randomize_added(model, "resnet3d-compact")
    assert model.config["hyper_layers"] == ["layer4.downsample.0"]  # the last block's shortcut conv
    layer = model.network.layer4.downsample[0]
    shape = tuple(layer.weight.shape)
    # the reference's modules, weights copied across: MLP_8_bn_prl's Linear-BatchNorm1d-PReLU embedding,
    # the kernel generator Linear(E, |W|) (its bias is the constant kernel) and the bias generator
    embedding = nn.Sequential(nn.Linear(K, 8), nn.BatchNorm1d(8), nn.PReLU()).double()
    embedding.load_state_dict(layer.embed.state_dict())
    weights_gen, bias_gen = nn.Linear(8, layer.weight.numel()).double(), nn.Linear(8, shape[0]).double()
    with torch.no_grad():
        weights_gen.weight.copy_(layer.hyper_weight.flatten(1).T), weights_gen.bias.copy_(layer.weight.flatten())
        bias_gen.weight.copy_(layer.hyper_bias.T), bias_gen.bias.copy_(layer.bias)
    x = torch.randn(4, shape[1], 4, 4, 4, dtype=torch.float64)
    z = torch.randn(4, K, dtype=torch.float64)
    ref = hyperfusion_reference(x, z, embedding, weights_gen, bias_gen, shape, layer.stride)
    out = layer(x, z)
    torch.testing.assert_close(out[0], ref[0], rtol=1e-10, atol=1e-12)  # the sample the reference pairs right
    # the others: the reference convolves sample i with sample i+1's kernel; covfuse on the shifted batch
    shifted = torch.cat([x[:1], x[:-1]])
    torch.testing.assert_close(layer(shifted, z)[1:], ref[1:], rtol=1e-10, atol=1e-12)
    assert (out[1:] - ref[1:]).abs().max() > 1e-3  # so covfuse does pair every sample with its own kernel


# ---- tab-attention: SanoScience/Tab-Attention src/models/tabattention.py ChannelGate, SpatialGate,
# placed as src/models/resnet_tabattention.py BasicBlock.forward (after conv1 = conv-BN-ReLU) ---------

def channel_gate_reference(x, tab, mlp, tab_embedding):
    """ChannelGate.forward, pool_types ['avg', 'max', 'tab']: sigmoid(mlp(avg) + mlp(max) + mlp(emb(tab)))."""
    def run(seq, v):
        return F.linear(F.relu(F.linear(v, seq[0].weight, seq[0].bias)), seq[2].weight, seq[2].bias)
    avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3))).flatten(1)
    max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3))).flatten(1)
    total = run(mlp, avg_pool) + run(mlp, max_pool) + run(mlp, run(tab_embedding, tab).reshape(-1, x.shape[1]))
    return x * torch.sigmoid(total).unsqueeze(2).unsqueeze(3).expand_as(x)


def spatial_gate_reference(x, tab, conv, bn, tab_embedding):
    """SpatialGate.forward: ChannelPool (max, mean over channels), the tabular map, BasicConv (7x7 conv
    without bias, BatchNorm momentum 0.01, no ReLU), sigmoid."""
    compress = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
    emb = F.linear(F.relu(F.linear(tab, tab_embedding[0].weight, tab_embedding[0].bias)),
                   tab_embedding[2].weight, tab_embedding[2].bias)
    compress = torch.cat((compress, emb.reshape(-1, 1, x.shape[2], x.shape[3])), dim=1)
    s = F.conv2d(compress, conv.weight, None, padding=(conv.kernel_size[0] - 1) // 2)
    s = F.batch_norm(s, None, None, bn.weight, bn.bias, True, 0.01, bn.eps)
    return x * torch.sigmoid(s)


def test_tab_attention_equals_the_references_gates_after_conv_bn_relu():
    torch.manual_seed(4)
    model = build("resnet18", "tab-attention", K, fusion_init="reference").double().train()
    randomize_added(model, "resnet18")
    block = model.network.layer1[0]
    att = block.bn1.attention
    x = torch.randn(4, 64, 7, 7, dtype=torch.float64)  # layer1's maps at 28 px: the 7 x 7 grid, no resizing
    z = torch.randn(4, K, dtype=torch.float64)
    with use_covariates(z):
        out = block(x)
    # BasicBlock.forward: out = conv1(x) (conv-BN-ReLU); out = cbam_layer(out, tab); conv2 (conv-BN); + x; ReLU
    h = F.relu(block.bn1.module(block.conv1(x)))
    h = channel_gate_reference(h, z, att.mlp, att.tab_channel)
    h = spatial_gate_reference(h, z, att.spatial, att.spatial_norm, att.tab_spatial)
    ref = F.relu(block.bn2(block.conv2(h)) + x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_tab_attention_reference_init_is_the_references():
    torch.manual_seed(5)
    att = build("resnet18", "tab-attention", K, fusion_init="reference").network.layer4[0].bn1.attention
    weights = torch.cat([m.weight.flatten() for m in att.modules() if isinstance(m, nn.Linear)])
    biases = torch.cat([m.bias for m in att.modules() if isinstance(m, nn.Linear)])
    assert abs(weights.std().item() - 0.01) < 0.001 and torch.equal(biases, torch.zeros_like(biases))  # N(0, 0.01), 0
    assert att.gain == 1.0


# ---- cond-norm: GuessWhatGame/neural_toolbox cbn_pluggin.py CBNfromLSTM (commit 81a2331) and cbn.py
# batch_norm ---------------------------------------------------------------------------------------

def cbn_reference(x, tab, gamma, beta, hidden_g, out_g, hidden_b, out_b, eps, moments=None):
    """create_cbn_input: h = relu(fc(tab)) per branch; delta_beta = fc(h_beta) without bias, delta_gamma =
    fc(h_gamma) with bias; batch_norm: gammas = gamma + delta_gamma, betas = beta + delta_beta,
    out = gammas * rsqrt(var + eps) * (x - mean) + betas, batch moments (training) or the moving ones."""
    h_betas = F.relu(tab @ hidden_b.weight.T + hidden_b.bias)
    delta_betas = h_betas @ out_b.weight.T
    h_gammas = F.relu(tab @ hidden_g.weight.T + hidden_g.bias)
    delta_gammas = h_gammas @ out_g.weight.T + out_g.bias
    gammas, betas = gamma + delta_gammas, beta + delta_betas
    nhwc = x.permute(0, 2, 3, 1)
    if moments is None:
        mean, variance = nhwc.mean((0, 1, 2)), nhwc.var((0, 1, 2), unbiased=False)
    else:
        mean, variance = moments
    inv = gammas * torch.rsqrt(variance + eps)[None]
    out = inv[:, None, None, :] * (nhwc - mean) + betas[:, None, None, :]
    return out.permute(0, 3, 1, 2)


def test_cond_norm_equals_conditional_batch_norm():
    torch.manual_seed(6)
    bn = nn.BatchNorm2d(5).double()
    cn = ConditionalNorm(bn, K, hidden=4).double()
    with torch.no_grad():
        for p in cn.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    assert cn.beta[2].bias is None and cn.gamma[2].bias is not None  # no bias on delta-beta
    x, z = torch.randn(6, 5, 3, 3, dtype=torch.float64), torch.randn(6, K, dtype=torch.float64)
    args = (bn.weight, bn.bias, cn.gamma[0], cn.gamma[2], cn.beta[0], cn.beta[2], bn.eps)
    torch.testing.assert_close(cn(x, z), cbn_reference(x, z, *args), rtol=1e-10, atol=1e-12)
    cn.eval()
    ref = cbn_reference(x, z, *args, moments=(bn.running_mean, bn.running_var))
    torch.testing.assert_close(cn(x, z), ref, rtol=1e-10, atol=1e-12)
    fresh = ConditionalNorm(nn.BatchNorm2d(5), K, init="reference")  # RandomUniform(-1e-4, 1e-4), biases 0
    weights = torch.cat([m.weight.flatten() for m in fresh.modules() if isinstance(m, nn.Linear)])
    assert weights.abs().max() <= 1e-4 and weights.abs().max() > 5e-5
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in fresh.modules() if isinstance(m, nn.Linear) and m.bias is not None)


def test_instance_norm_momentum_none_stays_none():
    norm = nn.InstanceNorm2d(3, momentum=None, track_running_stats=True)
    twin = nn.InstanceNorm2d(3, momentum=None, track_running_stats=True)
    cn = ConditionalNorm(norm, K)
    x = torch.randn(2, 3, 4, 4) * 3 + 2
    torch.testing.assert_close(cn(x, torch.randn(2, K)), twin(x))
    torch.testing.assert_close(norm.running_mean, twin.running_mean)  # PyTorch: momentum None moves nothing


# ---- every method: a sample's output depends on its own image and covariates only -------------------

@pytest.mark.parametrize("method", ["concat", "concat-2fc", "mlpcatmlp", "film", "daft", "duanmu", "tab-attention",
                                    "cond-norm", "hybrid", "hyper"])
@pytest.mark.parametrize("backbone", ["vgg-mini", "resnet3d-compact"])
def test_permuting_the_batch_permutes_the_outputs(method, backbone):
    torch.manual_seed(7)
    model = build(backbone, method, K).double()
    randomize_added(model, backbone)
    x = volume(6) if backbone == "resnet3d-compact" else torch.randn(6, 3, 32, 32, dtype=torch.float64)
    z = torch.randn(6, K, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for train in (True, False):  # batch statistics are permutation-invariant too
        model.train(train)
        for m in model.modules():  # dropout masks are drawn per position, not per sample
            if isinstance(m, nn.Dropout):
                m.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x[perm], z[perm]), model(x, z)[perm], rtol=1e-9, atol=1e-10)
    with torch.no_grad():  # and the covariates matter: swapping them between samples changes the outputs
        assert (model(x, z[perm]) - model(x, z)).abs().max() > 1e-6


def test_hyper_reference_init_is_hyperfusions_variance_rule():
    torch.manual_seed(8)
    layer = build("resnet3d-compact", "hyper", K, fusion_init="reference").network.layer4.downsample[0]
    fan_in, codes = layer.weight[0].numel(), layer.hyper_weight.shape[0]
    # variance_uniform_init: generators' biases (the constant kernel and bias) 0, weights U(+-sqrt(3 var)) with
    # var = 2 / (2 * fan_in * E * var_input) and 2 / (2 * E * var_input), var_input = 1
    assert not layer.weight.any() and not layer.bias.any()
    bound_w, bound_b = (3 / (fan_in * codes)) ** 0.5, (3 / codes) ** 0.5
    assert bound_w * 0.9 < layer.hyper_weight.abs().max() <= bound_w
    assert bound_b * 0.5 < layer.hyper_bias.abs().max() <= bound_b
    assert isinstance(layer.embed[1], nn.BatchNorm1d) and isinstance(layer.embed[2], nn.PReLU)
