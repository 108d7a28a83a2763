"""`covfuse explain` on the literature's methods: what each covariate path changes, recorded per sample and
checked against hand computations, and the command end to end on a tiny run of every method."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from covfuse.cli.main import main as covfuse
from covfuse.layers import ConditionalNorm, DuanmuFactor, HyperConv2d, TabAttention
from covfuse.models import build
from covfuse.studies.explain import explain_run
from covfuse.studies.explain.kernels import AffineRecorder, weight_summaries
from data_fixtures import make_twin


def recorded(model, x, z):
    recorder = AffineRecorder(model.network)
    with torch.no_grad(), recorder.recording():
        model(x, z)
    return recorder


def randomized(method: str, **options):
    torch.manual_seed(0)
    model = build("vgg-mini", method, 2, **options).eval()
    plain = set(build("vgg-mini", "image-only", 2).state_dict())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in plain:
                p.normal_(0, 0.3)
    return model


X, Z = torch.randn(5, 3, 32, 32), torch.tensor([[0.0, 1], [1, 0], [1, 1], [0, 0], [1, 0]])


def test_hyper_records_each_samples_kernel_change():
    model = randomized("hyper", hyper_embedding="relu")
    name, layer = next((n, m) for n, m in model.network.named_modules() if isinstance(m, HyperConv2d))
    scale, shift = recorded(model, X, Z).samples(name)
    for i in range(len(Z)):  # by hand: the MLP, then sum_e h_e W_e, per output channel
        h = torch.relu(layer.embed[0].weight @ Z[i] + layer.embed[0].bias)
        delta = sum(h[e] * layer.hyper_weight[e] for e in range(len(h)))
        want = delta.flatten(1).norm(dim=1) / layer.weight.flatten(1).norm(dim=1)
        np.testing.assert_allclose(scale[i], want.detach().numpy(), rtol=1e-5)
        np.testing.assert_allclose(shift[i], (h @ layer.hyper_bias).detach().numpy(), rtol=1e-5, atol=1e-7)


def test_cond_norm_records_the_norms_scale_and_shift():
    model = randomized("cond-norm", cond_norm_hidden=None)
    name, layer = next((n, m) for n, m in model.network.named_modules() if isinstance(m, ConditionalNorm))
    scale, shift = recorded(model, X, Z).samples(name)
    dgamma, dbeta = Z @ layer.gamma.weight.T + layer.gamma.bias, Z @ layer.beta.weight.T  # no bias on dbeta
    np.testing.assert_allclose(scale, (layer.norm.weight + dgamma).detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(shift, (layer.norm.bias + dbeta).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_duanmu_records_the_chain_factors():
    model = randomized("duanmu")
    factors = {n: m for n, m in model.network.named_modules() if isinstance(m, DuanmuFactor)}
    rec = recorded(model, X, Z)
    chain = next(iter(factors.values())).chain
    a = torch.relu(Z @ chain.base.weight.T)
    for i, name in enumerate(factors):
        a = a @ chain.maps[i].weight.T
        np.testing.assert_allclose(rec.samples(name)[0], (1 + a).detach().numpy(), rtol=1e-5)


def test_tab_attention_records_its_channel_gate():
    model = randomized("tab-attention")
    name, layer = next((n, m) for n, m in model.network.named_modules() if isinstance(m, TabAttention))
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0].clone(), out=o.clone()))
    rec = recorded(model, X, Z)
    handle.remove()
    gate, spatial = rec.samples(name)

    def mlp(seq, v):
        return seq[2](torch.relu(seq[0](v)))
    x = seen["x"]
    raw = mlp(layer.mlp, x.mean((2, 3))) + mlp(layer.mlp, x.amax((2, 3))) + mlp(layer.mlp, mlp(layer.tab_channel, Z))
    np.testing.assert_allclose(gate, (2 * torch.sigmoid(raw)).detach().numpy(), rtol=1e-5)
    # the output is x * channel gate * spatial gate (one value per position): its mean is the recorded one
    x1 = x * torch.as_tensor(gate)[:, :, None, None]
    ratio = torch.where(x1.abs() > 1e-3, seen["out"] / x1, torch.nan)
    per_position = ratio.nanmedian(dim=1).values  # the same for every channel
    np.testing.assert_allclose(per_position.mean((1, 2)).numpy(), spatial[:, 0], rtol=1e-4)


def test_mlpcat_summary_is_the_covariate_path_against_the_image_columns():
    model = randomized("mlpcatmlp")
    head = model.network.classifier[3]
    s = weight_summaries(model.network, ["a", "b"])["classifier.3"]
    path = head.covariates.weight @ head.mlp.weight
    image = head.image.weight.norm(dim=0).mean()
    assert s["kind"] == "mlpcatmlp"
    assert s["relative_norm"]["b"] == pytest.approx(float((path[:, 1].norm() / image).detach()), rel=1e-5)


FIT = ["--data.image_size", "32", "--data.covariates", "[Young,Male]", "--data.batch_size", "32",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--bootstrap", "20",
       "--trainer.summary", "false", "--trainer.progress", "none"]


@pytest.mark.parametrize("method", ["hyper", "mlpcatmlp", "duanmu", "tab-attention", "cond-norm"])
def test_explain_runs_on_every_method_and_reports_its_layers(method, tmp_path_factory):
    root = make_twin(tmp_path_factory, n=96, size=(44, 54))
    runs = tmp_path_factory.mktemp("runs")
    assert covfuse(["fit", "--data.root", str(root), "--runs_dir", str(runs), "--name", "r", "--model.fusion", method, *FIT]) == 0
    out = explain_run("r", runs_dir=runs, n_boot=20, examples=0, mass_images=0, n_steps=2, progress=False)
    result = json.loads((out / "explain.json").read_text())
    assert set(result["covariates"]) == {"Young", "Male"}
    kinds = {s["kind"] for s in result["layers"].values()}
    assert kinds == {method}
    assert f"({method}" in (out / "explain.md").read_text()
