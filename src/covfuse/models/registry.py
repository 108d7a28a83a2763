"""Names the model builder accepts: backbones, fusion methods, regimes and heads, as data.

A backbone is a :class:`BackboneSpec` (which torchvision builder, where its head and classifier
live, its stage ends); a fusion method is a set of components. Adding a variant is adding a row.
"""
from __future__ import annotations

from dataclasses import dataclass

from covfuse.errors import UserError, suggest


@dataclass(frozen=True)
class BackboneSpec:
    """Where things are in one backbone; module names as in ``model.named_modules()``."""

    name: str
    family: str                   # "vgg", "resnet" or "vgg-mini"
    torchvision: str | None       # builder name in torchvision.models (None: covfuse's own or MONAI's)
    head: str                     # the last Linear, replaced by the task head
    classifier: str               # trained under the features-frozen regime
    input_size: int               # default input side for describe / dry runs
    imagenet: bool = True         # torchvision publishes ImageNet weights for it
    spatial_dims: int = 2         # 2: images (N, C, H, W); 3: volumes (N, C, D, H, W)
    in_channels: int = 3          # input channels (RGB images 3, MRI volumes 1)


def _vgg(name: str) -> BackboneSpec:
    return BackboneSpec(name, "vgg", name, head="classifier.6", classifier="classifier", input_size=224)


def _resnet(name: str) -> BackboneSpec:
    # ResNets have a single Linear after pooling: features-frozen and linear-probe coincide.
    return BackboneSpec(name, "resnet", name, head="fc", classifier="fc", input_size=224)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *(_vgg(f"vgg{depth}{bn}") for depth in (11, 13, 16, 19) for bn in ("", "_bn")),
        *(_resnet(f"resnet{depth}") for depth in (18, 34, 50)),
        BackboneSpec("vgg-mini", "vgg-mini", None, head="classifier.3", classifier="classifier",
                     input_size=64, imagenet=False),
        # 3D ResNets for volumes (covfuse.models.volumetric): torchvision's ResNet module names.
        *(BackboneSpec(name, "resnet", None, head="fc", classifier="fc", input_size=64 if "compact" in name else 32,
                       imagenet=False, spatial_dims=3, in_channels=1)
          for name in ("resnet3d-compact", "resnet3d-compact-wide", "monai-resnet10", "monai-resnet18", "monai-resnet34")),
    ]
}


# Components a '+' combination may join, in the order they are applied to the backbone (the methods
# from the literature, docs/methods.md, are single components used alone).
CONDITIONING = ("hybrid", "film", "daft", "concat", "concat-2fc")


@dataclass(frozen=True)
class FusionSpec:
    """A fusion method: which conditioning components it applies (none: image-only, covariates-only)."""

    name: str
    components: tuple[str, ...]
    description: str
    uses_image: bool = True


FUSIONS: dict[str, FusionSpec] = {
    spec.name: spec
    for spec in [
        FusionSpec("image-only", (), "the backbone alone; covariates ignored"),
        FusionSpec("covariates-only", (), "logistic regression (or MLP) on the covariates alone: the leakage check",
                   uses_image=False),
        FusionSpec("concat", ("concat",), "covariates concatenated to the penultimate features, 1 FC layer"),
        FusionSpec("concat-2fc", ("concat-2fc",), "covariates concatenated to the penultimate features, 2 FC layers"),
        FusionSpec("film", ("film",), "FiLM (Perez et al. 2018) after chosen BatchNorm layers"),
        FusionSpec("daft", ("daft",), "DAFT (Pölsterl et al. 2021) behind a chosen module"),
        FusionSpec("hybrid", ("hybrid",), "hybrid convolutions at chosen conv layers (covfuse.layers.convert)"),
        FusionSpec("hybrid+concat", ("hybrid", "concat"), "hybrid convolutions and a concat head"),
        FusionSpec("hybrid+film", ("hybrid", "film"), "hybrid convolutions and FiLM"),
        FusionSpec("hybrid+daft", ("hybrid", "daft"), "hybrid convolutions and DAFT"),
        # Methods from the literature (docs/methods.md); each is used alone, not in '+' combinations.
        FusionSpec("hyper", ("hyper",), "hypernetwork kernels (HyperFusion, Duenias et al. 2024) at chosen convs"),
        FusionSpec("mlpcatmlp", ("mlpcatmlp",), "covariates through a Linear-ReLU, concatenated to the penultimate "
                   "features, 1 FC layer (DAFT's MLP-concat baseline)"),
        FusionSpec("duanmu", ("duanmu",), "covariates reweight the channels entering every stage (Duanmu et al. 2020)"),
        FusionSpec("tab-attention", ("tab-attention",), "CBAM channel and spatial attention conditioned on the "
                   "covariates (Tab-Attention, Grzeszczyk et al. 2023)"),
        FusionSpec("cond-norm", ("cond-norm",), "conditional BatchNorm/InstanceNorm: norm scale and shift from the "
                   "covariates (de Vries et al. 2017)"),
    ]
}

REGIMES: dict[str, str] = {
    "finetune": "every parameter trainable",
    "features-frozen": "classifier (VGG: all of `classifier`; ResNet: `fc`) and conditioning trainable",
    "linear-probe": "last layer and conditioning trainable",
    "scratch": "random initialisation, every parameter trainable (weights must be None)",
}

HEADS: dict[str, str] = {
    "binary": "one logit, binary cross-entropy",
    "two-class": "two logits, cross-entropy (as in the research)",
    "multiclass": "one logit per class (num_classes), cross-entropy",
    "regression": "one output, mean squared error on the standardised target",
    "survival": "one risk score (log relative hazard), Cox partial likelihood over the batch (Breslow or Efron ties)",
}


def head_outputs(head: str, num_classes: int | None = None) -> int:
    """How many outputs the task head ``head`` has; ``multiclass`` needs ``num_classes`` >= 3
    (two classes are ``binary`` or ``two-class``)."""
    check_choice("head", head, HEADS)
    if head == "multiclass":
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 3:
            raise UserError(f"head 'multiclass' needs num_classes >= 3, got {num_classes!r}; "
                            "for two classes use head binary or two-class")
        return num_classes
    return 2 if head == "two-class" else 1


def list_backbones() -> list[str]:
    """Backbone names accepted by :func:`covfuse.models.build`."""
    return list(BACKBONES)


def list_fusions() -> list[str]:
    """Registered fusion names; any '+' combination of hybrid, film, daft and one concat variant works too."""
    return list(FUSIONS)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``, or a UserError with a suggestion."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}{suggest(name, BACKBONES)}; choose from {', '.join(BACKBONES)}")
    return BACKBONES[name]


def fusion_spec(name: str) -> FusionSpec:
    """The registered spec, or one parsed from a '+' combination such as ``film+concat``."""
    if name in FUSIONS:
        return FUSIONS[name]
    parts = name.split("+")
    if len(parts) > 1 and all(p in CONDITIONING for p in parts) and len(set(parts)) == len(parts):
        if "concat" in parts and "concat-2fc" in parts:
            raise UserError(f"fusion {name!r} combines two concat heads; use one of concat, concat-2fc")
        components = tuple(c for c in CONDITIONING if c in parts)
        return FusionSpec(name, components, "combination of " + ", ".join(components))
    bad = next((p for p in parts if p not in CONDITIONING), name) if len(parts) > 1 else name
    raise UserError(
        f"unknown fusion {bad!r}{suggest(bad, [*FUSIONS, *CONDITIONING])}; choose from {', '.join(FUSIONS)}, "
        f"or join {', '.join(CONDITIONING)} with '+'"
    )


def check_choice(kind: str, value: str, choices: dict) -> str:
    """``value`` if it is one of ``choices``, else a UserError with a suggestion."""
    if value not in choices:
        raise UserError(f"unknown {kind} {value!r}{suggest(str(value), choices)}; choose from {', '.join(choices)}")
    return value
