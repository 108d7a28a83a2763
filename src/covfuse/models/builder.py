"""``covfuse.models.build``: the one function that turns names into a model (the models contract)."""
from __future__ import annotations

import os
from typing import Any

from covfuse.errors import UserError, suggest
from covfuse.layers.helpers import INITS
from covfuse.layers.hyper import EMBEDDINGS
from covfuse.models.backbones import apply_regime, build_backbone
from covfuse.models.fusion import (
    CovariateClassifier,
    FusionModel,
    apply_concat,
    apply_cond_norm,
    apply_daft,
    apply_duanmu,
    apply_film,
    apply_hybrid,
    apply_hyper,
    apply_mlpcat,
    apply_tab_attention,
    conditioning_roots,
    daft_bottleneck,
)
from covfuse.models.registry import REGIMES, backbone_spec, check_choice, fusion_spec, head_outputs

# Options of `build(**options)`, with their defaults; anything else is an error.
OPTIONS: dict[str, Any] = {
    "film_layers": None,        # BatchNorm names / indices / first|last|all; None = covfuse's choice, daft's place
                                # (after the last stage's first conv1-BN, layer4.0.bn1; no DAFT script trains FiLM)
    "film_hidden": "daft",      # "daft": DAFT's bottleneck width; None: gamma, beta linear in z; int: hidden width
    "film_bias": False,         # biases in the FiLM generator (DAFT's FilmBlock has none)
    "daft_layer": None,         # module name or stage index; None = DAFT's scripts' place (layer4.0.bn1)
    "daft_reduction": 7.0,      # DAFT's bottleneck_factor: "daft" widths are int((channels entering the last stage + K) / it)
    "daft_bias": False,         # biases in the DAFT MLP (DAFT's DAFTBlock has none)
    "daft_hidden": "daft",      # "daft": DAFT's bottleneck width (as film); None: (C + K) / daft_reduction of the C
                                # channels DAFT transforms; int: hidden width
    "fusion_init": "identity",  # "identity": every method starts as image-only; "reference": the authors' init
    "concat_hidden": 64,        # hidden width of concat-2fc
    "covariates_hidden": None,  # covariates-only: None = logistic regression, int = MLP width
    "hybrid_init": "zeros",     # "zeros" (start as the image-only model) or "kaiming" (the research's random W_j)
    "frozen_norm": "eval",      # frozen regimes: "eval" keeps frozen BatchNorm statistics fixed, "train" updates them
    # methods from the literature (docs/methods.md); None placements = the reference's place
    "hyper_layers": None,       # conv names / indices / first|last|all; None = last stage's shortcut conv (else last conv)
    "hyper_width": 8,           # hypernetwork code width E (HyperFusion's embedding size)
    "hyper_depth": 1,           # embedding layers before the kernel generator (0: hybrid's linear form)
    "hyper_embedding": "reference",  # "reference": Linear-BatchNorm1d-PReLU (HyperFusion); "relu": Linear-ReLU
    "hyper_bias": True,         # generate a bias even where the conv has none (as HyperFusion always does)
    "mlpcat_hidden": None,      # mlpcatmlp: width of the covariates' Linear-ReLU; None = DAFT's bottleneck width
    "duanmu_hidden": 8,         # duanmu: width of the first covariate layer (as in DAFT's InteractiveHNN)
    "tab_attention_layers": None,  # norm names / indices / first|last|all; None = every residual block's bn1
                                   # (VGG: every BN but the first)
    "tab_attention_reduction": 16,  # CBAM's channel reduction
    "tab_attention_grid": 7,    # side of the grid the tabular spatial map is predicted on
    "tab_attention_relu": True,  # gate post-ReLU features (the reference's place); False: the norm's output
    "cond_norm_layers": None,   # norm names / indices / first|last|all; None = all
    "cond_norm_hidden": 16,     # None: delta gamma, beta linear in z; int: hidden width of the generator
}
_CHOICES = {"hybrid_init": ("zeros", "kaiming"), "frozen_norm": ("eval", "train"), "fusion_init": INITS,
            "hyper_embedding": EMBEDDINGS}
_BOOLS = ("film_bias", "daft_bias", "hyper_bias", "tab_attention_relu")
_OPTIONAL_INTS = ("film_hidden", "covariates_hidden", "cond_norm_hidden", "mlpcat_hidden", "daft_hidden")
_POSITIVE_INTS = ("concat_hidden", "hyper_width", "duanmu_hidden", "tab_attention_reduction",
                  "tab_attention_grid")


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    for key in options:
        if key not in OPTIONS:
            raise UserError(f"unknown model option {key!r}{suggest(key, OPTIONS)}; options: {', '.join(OPTIONS)}")
    merged = {**OPTIONS, **options}
    for key, choices in _CHOICES.items():
        if merged[key] not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, got {merged[key]!r}")
    for key in _BOOLS:
        if not isinstance(merged[key], bool):
            raise UserError(f"{key} must be true or false, got {merged[key]!r}")
    for key in (*_OPTIONAL_INTS, *_POSITIVE_INTS):
        value = merged[key]
        if key in ("film_hidden", "daft_hidden") and value == "daft":
            continue
        if (value is not None or key in _POSITIVE_INTS) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{key} must be a positive integer{' or None' if key in _OPTIONAL_INTS else ''}"
                            f"{' or daft' if key in ('film_hidden', 'daft_hidden') else ''}, got {value!r}")
    if isinstance(merged["hyper_depth"], bool) or not isinstance(merged["hyper_depth"], int) or merged["hyper_depth"] < 0:
        raise UserError(f"hyper_depth must be an integer >= 0, got {merged['hyper_depth']!r}")
    if isinstance(merged["daft_reduction"], bool) or not isinstance(merged["daft_reduction"], (int, float)) or merged["daft_reduction"] <= 0:
        raise UserError(f"daft_reduction must be a positive number, got {merged['daft_reduction']!r}")
    return merged


def build(
    backbone: str,
    fusion: str,
    num_covariates: int,
    *,
    hybrid_layers: str | int | list[str | int] = "first",
    weights: str | os.PathLike | None = None,
    regime: str = "finetune",
    head: str = "binary",
    num_classes: int | None = None,
    **options: Any,
) -> FusionModel:
    """A model whose ``forward(x, covariates)`` returns logits (N,) (``head="two-class"``: (N, 2);
    ``"multiclass"``: (N, num_classes); ``"regression"``: one value (N,); ``"survival"``: one risk (N,)).

    ``backbone``: see :func:`list_backbones`. ``fusion``: see :func:`list_fusions`, or a '+' join of
    hybrid, film, daft and one of concat / concat-2fc. ``hybrid_layers``: conv names, indices into
    the backbone's conv list, a comma-separated string of either, or first/last/all (vgg16_bn: the
    research's placements are ``features.0``, ``features.7`` (third conv, index 2), ``features.14``,
    ``features.40``). ``weights``: None, "imagenet" (from the torch hub cache only) or a state-dict
    path. ``regime``: finetune, features-frozen, linear-probe, scratch (weights must be None).
    ``options``: see :data:`OPTIONS`; options of fusion components not used are ignored.
    With the default inits the conditioning starts at zero: the model equals its image-only form
    (``fusion_init="reference"`` and ``hybrid_init="kaiming"`` start elsewhere). ``model.config`` holds
    the arguments, with placements resolved to module names, for :func:`build_from_config`.
    """
    spec = backbone_spec(backbone)
    fspec = fusion_spec(fusion)
    check_choice("regime", regime, REGIMES)
    out_features = head_outputs(head, num_classes)
    opts = _check_options(options)
    uses_covariates = fspec.name != "image-only"
    if isinstance(num_covariates, bool) or not isinstance(num_covariates, int) or num_covariates < int(uses_covariates):
        raise UserError(f"num_covariates must be an integer >= {int(uses_covariates)} for fusion {fusion!r}, got {num_covariates!r}")
    if regime == "scratch" and weights is not None:
        raise UserError(f"regime 'scratch' trains from random initialisation, but weights={str(weights)!r} was given; "
                        "use regime 'finetune' to start from weights")
    config: dict[str, Any] = {
        "backbone": backbone, "fusion": fusion, "num_covariates": num_covariates,
        "hybrid_layers": hybrid_layers if isinstance(hybrid_layers, (str, int)) else list(hybrid_layers),
        "weights": None if weights is None else str(weights), "regime": regime, "head": head,
        **({"num_classes": num_classes} if head == "multiclass" else {}), **opts,
    }
    if not fspec.uses_image:  # covariates-only: no backbone is built, weights and regime do not apply
        network = CovariateClassifier(num_covariates, out_features, opts["covariates_hidden"])
        return FusionModel(network, num_covariates, out_features=out_features, config=config)

    network = build_backbone(backbone, weights=weights, head=head, num_classes=num_classes)
    init = opts["fusion_init"]
    if {"film", "daft", "mlpcatmlp"} & set(fspec.components):  # probed before any layer is wrapped
        bottleneck = daft_bottleneck(network, spec, num_covariates, opts["daft_reduction"])
    for component in fspec.components:  # the registry orders them: hybrid, film, daft, concat
        if component == "hybrid":
            config["hybrid_layers"] = apply_hybrid(network, spec, hybrid_layers, num_covariates, opts["hybrid_init"])
        elif component == "film":
            hidden = bottleneck if opts["film_hidden"] == "daft" else opts["film_hidden"]
            config["film_layers"] = apply_film(network, spec, opts["film_layers"], num_covariates, hidden,
                                               bias=opts["film_bias"], init=init)
        elif component == "daft":
            config["daft_layer"] = apply_daft(network, spec, opts["daft_layer"], num_covariates, opts["daft_reduction"],
                                              hidden=bottleneck if opts["daft_hidden"] == "daft" else opts["daft_hidden"],
                                              bias=opts["daft_bias"], init=init)
        elif component == "hyper":
            config["hyper_layers"] = apply_hyper(network, spec, opts["hyper_layers"], num_covariates,
                                                 opts["hyper_width"], opts["hyper_depth"],
                                                 embedding=opts["hyper_embedding"], init=init,
                                                 bias=True if opts["hyper_bias"] else None)
        elif component == "cond-norm":
            config["cond_norm_layers"] = apply_cond_norm(network, spec, opts["cond_norm_layers"], num_covariates,
                                                         opts["cond_norm_hidden"], init)
        elif component == "tab-attention":
            config["tab_attention_layers"] = apply_tab_attention(
                network, spec, opts["tab_attention_layers"], num_covariates, opts["tab_attention_reduction"],
                opts["tab_attention_grid"], opts["tab_attention_relu"], init)
        elif component == "duanmu":
            apply_duanmu(network, spec, num_covariates, opts["duanmu_hidden"], init)
        elif component == "mlpcatmlp":
            hidden = bottleneck if opts["mlpcat_hidden"] is None else opts["mlpcat_hidden"]
            apply_mlpcat(network, spec, num_covariates, out_features, hidden, init)
        else:
            hidden = opts["concat_hidden"] if component == "concat-2fc" else None
            apply_concat(network, spec, num_covariates, out_features, hidden)
    frozen = apply_regime(network, spec, regime, conditioning_roots(network))
    return FusionModel(network, num_covariates, out_features=out_features, uses_covariates=uses_covariates,
                       frozen_norms=frozen if opts["frozen_norm"] == "eval" else [], config=config)


# Defaults before issue 26 (reference-faithful defaults) for options a config of that time leaves out;
# cond-norm's generator changed shape then, so its older checkpoints do not load.
_LEGACY: dict[str, Any] = {"film_bias": True, "daft_bias": True, "daft_hidden": None, "hyper_embedding": "relu",
                           "hyper_bias": False, "tab_attention_relu": False}


def build_from_config(config: dict[str, Any]) -> FusionModel:
    """Rebuild a model from ``model.config`` (as saved in a checkpoint) with random weights, ready for
    ``load_state_dict``; weights named in the config are not read again."""
    config = dict(config)
    config["weights"] = None
    if "fusion_init" not in config:  # saved before issue 26: the defaults of that time where they changed
        config = {**_LEGACY, **config}
    try:
        return build(config.pop("backbone"), config.pop("fusion"), config.pop("num_covariates"), **config)
    except (KeyError, TypeError) as exc:
        raise UserError(f"model config is incomplete or has unknown keys: {exc}") from None


__all__ = ["OPTIONS", "build", "build_from_config"]
