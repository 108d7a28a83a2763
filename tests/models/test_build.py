"""covfuse.models.build: every fusion method on small backbones, identity at init, names and options."""
from __future__ import annotations

import pytest
import torch
import torchvision

from covfuse.errors import UserError
from covfuse.models import build, build_from_config, list_backbones, list_fusions
from covfuse.models.fusion import apply_film, as_layer_list
from covfuse.models.registry import backbone_spec

FUSIONS = list_fusions() + ["hybrid+film+daft+concat-2fc"]
# Fusions whose model, at init and with the same backbone weights, computes the image-only function.
SAME_AS_IMAGE_ONLY = [("vgg-mini", f) for f in ("concat", "film", "daft", "hybrid", "hybrid+concat", "hybrid+film",
                                                 "hybrid+daft", "film+daft+concat")]
SAME_AS_IMAGE_ONLY += [("resnet18", f) for f in ("concat", "film", "daft", "hybrid")]


@pytest.mark.parametrize("backbone", ["vgg-mini", "resnet18"])
@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("k", [1, 3])
def test_forward_backward(backbone, fusion, k):
    torch.manual_seed(0)
    model = build(backbone, fusion, k, hybrid_layers="all" if k == 3 else "first")
    x, z = torch.randn(2, 3, 32, 32), torch.randn(2, k)
    out = model(x, z)
    assert out.shape == (2,) and out.dtype == torch.float32
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([0.0, 1.0])).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    # The covariates reach the loss: the zero-initialised conditioning gets a gradient at once.
    if fusion != "image-only":
        cov = [n for n, g in grads.items() if ("covariate" in n or "film" in n or "daft" in n or "net" in n
                                             or "hyper_" in n or "generator" in n or "attention" in n or "mlp" in n)]
        assert cov and any(grads[n].abs().sum() > 0 for n in cov)
    if "hybrid" in fusion:  # every hybrid conv's covariate kernels and biases get a non-zero gradient
        hybrid = [n for n in grads if n.endswith(("covariate_weight", "covariate_bias"))]
        assert hybrid and all(grads[n].abs().sum() > 0 for n in hybrid), [n for n in hybrid if grads[n].abs().sum() == 0]


@pytest.mark.parametrize("fusion", ["image-only", "covariates-only", "concat-2fc", "hybrid+daft"])
def test_two_class_head_gives_two_logits(fusion):
    model = build("vgg-mini", fusion, 2, head="two-class")
    assert model(torch.randn(3, 3, 32, 32), torch.randn(3, 2)).shape == (3, 2)


@pytest.mark.parametrize("backbone, fusion", SAME_AS_IMAGE_ONLY)
def test_fusion_starts_as_the_image_only_model(backbone, fusion):
    torch.manual_seed(1)
    reference = build(backbone, "image-only", 0).eval()
    torch.manual_seed(1)  # same seed: the backbone gets the same weights before the fusion edits it
    model = build(backbone, fusion, 3, hybrid_layers=[0, -1]).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        for z in (torch.zeros(4, 3), torch.randn(4, 3) * 5, torch.tensor([[1.0, 0, 1]] * 4)):
            torch.testing.assert_close(model(x, z), expected, rtol=1e-5, atol=1e-6)
        # Not because the covariates are ignored: once the conditioning parameters move, they matter.
        for name, p in model.named_parameters():
            if name not in dict(reference.named_parameters()):
                p.normal_(0, 0.3)
        z1, z2 = torch.tensor([[1.0, 0, 1]] * 4), torch.tensor([[0.0, 1, 0]] * 4)
        assert (model(x, z1) - model(x, z2)).abs().max() > 1e-4


def test_concat_2fc_ignores_covariates_at_init_and_uses_them_after_a_step():
    torch.manual_seed(0)
    model = build("vgg-mini", "concat-2fc", 2).eval()
    x = torch.randn(4, 3, 32, 32)
    z1, z2 = torch.randn(4, 2), torch.randn(4, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, z1), model(x, z2))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(x, z1).sum().backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(x, z1), model(x, z2))


def test_image_only_ignores_covariates_and_covariates_only_ignores_image():
    image_only = build("vgg-mini", "image-only", 3).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(image_only(x, None), image_only(x, torch.randn(2, 3)))
    logistic = build("vgg-mini", "covariates-only", 3)
    z = torch.randn(5, 3)
    lin = logistic.network.net
    torch.testing.assert_close(logistic(torch.randn(5, 3, 32, 32), z), z @ lin.weight[0] + lin.bias[0])
    mlp = build("resnet18", "covariates-only", 3, covariates_hidden=8)
    assert sum(p.numel() for p in mlp.parameters()) == 3 * 8 + 8 + 8 + 1


def test_default_placements_per_backbone():
    assert build("vgg-mini", "film", 1).config["film_layers"] == ["features.13"]
    # DAFT's scripts (--film_location 3): after conv1 and the BatchNorm of the last stage's first block
    assert build("resnet18", "film", 1).config["film_layers"] == ["layer4.0.bn1"]
    assert build("resnet18", "daft", 1).config["daft_layer"] == "layer4.0.bn1"
    assert build("resnet3d-compact", "daft", 1).config["daft_layer"] == "layer4.bn1"
    assert build("vgg-mini", "daft", 1).config["daft_layer"] == "features.13"
    with torch.device("meta"):  # vgg11 without BatchNorm, built without the cost of a random init
        vgg11 = torchvision.models.vgg11()
    assert apply_film(vgg11, backbone_spec("vgg11"), None, 1) == ["features.16"]  # no BatchNorm: after the last stage's first conv


def test_placements_by_name_index_and_selector():
    assert build("vgg-mini", "hybrid", 1, hybrid_layers="features.0,features.8").config["hybrid_layers"] == ["features.0", "features.8"]
    assert build("vgg-mini", "hybrid", 1, hybrid_layers="0,-1").config["hybrid_layers"] == ["features.0", "features.12"]
    assert build("vgg-mini", "hybrid", 1, hybrid_layers=2).config["hybrid_layers"] == ["features.8"]
    assert build("vgg-mini", "hybrid", 1, hybrid_layers="all").config["hybrid_layers"] == [f"features.{i}" for i in (0, 4, 8, 12)]
    assert build("vgg-mini", "film", 1, film_layers="all").config["film_layers"] == [f"features.{i}" for i in (1, 5, 9, 13)]
    assert build("resnet18", "daft", 1, daft_layer=1).config["daft_layer"] == "layer2"
    assert build("resnet18", "daft", 1, daft_layer="layer4.0").config["daft_layer"] == "layer4.0"
    assert as_layer_list(" features.0 , 3") == ["features.0", 3]


def test_state_dict_keeps_backbone_keys_and_adds_covariate_ones():
    plain = set(build("vgg-mini", "image-only", 0).network.state_dict())
    hybrid = set(build("vgg-mini", "hybrid", 2, hybrid_layers="features.4").network.state_dict())
    assert hybrid - plain == {"features.4.covariate_weight", "features.4.covariate_bias"}
    assert plain <= hybrid


def test_rebuild_from_config_round_trip():
    model = build("resnet18", "hybrid+film+concat", 2, hybrid_layers=[1], film_layers="first")
    rebuilt = build_from_config(model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    model.eval(), rebuilt.eval()
    x, z = torch.randn(2, 3, 32, 32), torch.randn(2, 2)
    torch.testing.assert_close(model(x, z), rebuilt(x, z))
    assert rebuilt.config == model.config


@pytest.mark.parametrize("kwargs, message", [
    ({"backbone": "vgg16bn"}, "did you mean 'vgg16_bn'"),
    ({"backbone": "resnet"}, "unknown backbone"),
    ({"fusion": "hybird"}, "did you mean 'hybrid'"),
    ({"fusion": "film+contact"}, "did you mean 'concat'"),
    ({"fusion": "concat+concat-2fc"}, "two concat heads"),
    ({"regime": "fine-tune"}, "did you mean 'finetune'"),
    ({"head": "binary-class"}, "unknown head"),
    ({"film_layer": "all"}, "did you mean 'film_layers'"),
    ({"hybrid_layers": "features.1"}, "not one of the convolutions"),
    ({"hybrid_layers": [40]}, "out of range"),
    ({"film_layers": ["features.0"]}, "not one of the film layers"),
    ({"daft_layer": "layer9"}, "not a module"),
    ({"num_covariates": 0}, "num_covariates"),
    ({"concat_hidden": 0}, "positive integer"),
    ({"hybrid_init": "normal"}, "hybrid_init"),
    ({"regime": "scratch", "weights": "imagenet"}, "scratch"),
])
def test_bad_arguments_are_user_errors(kwargs, message):
    args = {"backbone": "vgg-mini", "fusion": "hybrid+film+daft", "num_covariates": 2, **kwargs}
    with pytest.raises(UserError, match=message):
        build(args.pop("backbone"), args.pop("fusion"), args.pop("num_covariates"), **args)


def test_registry_lists_the_contract_names():
    assert {"vgg16_bn", "vgg16", "vgg11_bn", "vgg19", "resnet18", "resnet34", "resnet50", "vgg-mini"} <= set(list_backbones())
    assert {"image-only", "covariates-only", "concat", "film", "daft", "hybrid"} <= set(list_fusions())


def test_bad_covariates_in_forward_are_rejected():
    model = build("vgg-mini", "hybrid", 2)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        model(x, torch.randn(2, 3))
    with pytest.raises(ValueError, match="needs covariates"):
        model(x)
    with pytest.raises(ValueError, match="NaN"):
        model(x, torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
