"""Fusion methods: where and how covariates enter a backbone, each starting as the image-only model.

Every method edits an unmodified backbone in place (hybrid convs via :func:`covfuse.layers.convert`,
:class:`FiLMAfter` behind BatchNorm layers, :class:`DAFTAfter` behind one module, a
:class:`ConcatHead` instead of the last Linear; for the methods of docs/methods.md hyper convs,
conditional norms, tab-attention behind norms, Duanmu gates around stages, an MLP-concat head), and
:class:`FusionModel` runs the edited backbone's own ``forward(x)`` with the covariates visible to
those layers through the covariate context.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from covfuse.errors import UserError, suggest
from covfuse.layers import HybridConv1d, HybridConv2d, HybridConv3d, convert
from covfuse.layers.convert import SELECTORS, resolve_layers, select_names
from covfuse.layers.context import check_covariates, current_covariates, use_covariates
from covfuse.layers.cond_norm import ConditionalNorm, is_norm
from covfuse.layers.daft import DAFT, DAFTAfter
from covfuse.layers.duanmu import DuanmuAttention, DuanmuFactor, DuanmuGate
from covfuse.layers.film import FiLM, FiLMAfter
from covfuse.layers.hyper import HYPER_FOR_CONV, HYPER_TYPES
from covfuse.layers.mlpcat import MLPCatHead
from covfuse.layers.tab_attention import TabAttention, TabAttentionAfter
from covfuse.models.backbones import CONV_TYPES, norm_names, set_submodule, stage_ends
from covfuse.models.registry import BackboneSpec

HYBRID_TYPES = (HybridConv1d, HybridConv2d, HybridConv3d)


class ConcatHead(nn.Module):
    """Last layer(s) on [features ⊕ covariates]: the concat-1FC / concat-2FC baselines of Pölsterl et al. 2021.

    ``Linear(F + K, ·)`` is kept as two blocks, ``image`` (F columns) and ``covariates`` (K columns,
    zero at init, no bias), so the head starts as an image-only head and the covariate-specific
    parameters are separate tensors. ``hidden=None``: one FC layer; an int: FC-ReLU-FC.
    Covariates come from the context.
    """

    def __init__(self, in_features: int, num_covariates: int, out_features: int, hidden: int | None = None,
                 image: nn.Linear | None = None) -> None:
        super().__init__()
        width = out_features if hidden is None else hidden
        self.image = image if image is not None and hidden is None else nn.Linear(in_features, width)
        self.covariates = nn.Linear(num_covariates, width, bias=False)
        nn.init.zeros_(self.covariates.weight)
        self.out = None if hidden is None else nn.Sequential(nn.ReLU(inplace=True), nn.Linear(hidden, out_features))

    def forward(self, features: Tensor) -> Tensor:
        z = current_covariates("ConcatHead").to(self.covariates.weight.dtype)
        y = self.image(features) + self.covariates(z)
        return y if self.out is None else self.out(y)


class CovariateClassifier(nn.Module):
    """Logistic regression (``hidden=None``) or a one-hidden-layer MLP on the covariates; ignores the image."""

    def __init__(self, num_covariates: int, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        if hidden is None:
            self.net = nn.Linear(num_covariates, out_features)
        else:
            self.net = nn.Sequential(nn.Linear(num_covariates, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(current_covariates("CovariateClassifier").to(next(self.parameters()).dtype))


# Module types that make a layer covariate-conditioned, and the word describe/report use for them.
CONDITIONING_KINDS: dict[type[nn.Module], str] = {
    **{t: "hybrid" for t in HYBRID_TYPES}, FiLM: "film", DAFT: "daft", ConcatHead: "concat",
    CovariateClassifier: "covariates", **{t: "hyper" for t in HYPER_TYPES}, ConditionalNorm: "cond-norm",
    TabAttention: "tab-attention", DuanmuFactor: "duanmu", MLPCatHead: "mlpcatmlp",
}


def conditioned_layers(network: nn.Module) -> dict[str, str]:
    """{module name: kind} for every conditioning module inside ``network`` (kinds: CONDITIONING_KINDS)."""
    return {name: CONDITIONING_KINDS[type(m)] for name, m in network.named_modules() if type(m) in CONDITIONING_KINDS}


def conditioning_roots(network: nn.Module) -> list[str]:
    """Modules that train under the frozen regimes: every conditioning module, but of a conditional norm
    only its two generators, so the wrapped norm's affine and statistics stay frozen as in the image-only
    model (de Vries et al. likewise train only the conditioning of a frozen pretrained ResNet)."""
    roots = []
    for name, m in network.named_modules():
        if isinstance(m, ConditionalNorm):
            roots += [f"{name}.gamma", f"{name}.beta"]
        elif type(m) in CONDITIONING_KINDS:
            roots.append(name)
    return roots


class FusionModel(nn.Module):
    """``forward(x, covariates)`` → logits (N,) (one output) or (N, outputs); the built model.

    ``network`` is the edited backbone; its conditioned layers read the covariates from the context
    this ``forward`` opens. ``uses_covariates=False`` (image-only) ignores covariates entirely.
    BatchNorm layers listed in ``frozen_norms`` (frozen by the training regime) stay in eval mode
    whatever ``train()`` says: with frozen affine parameters, updating their running statistics
    would change the frozen features under the classifier's feet.
    """

    def __init__(self, network: nn.Module, num_covariates: int, *, out_features: int, uses_covariates: bool = True,
                 frozen_norms: list[str] | None = None, config: dict | None = None) -> None:
        super().__init__()
        self.network = network
        self.num_covariates, self.out_features, self.uses_covariates = num_covariates, out_features, uses_covariates
        self.frozen_norms = list(frozen_norms or [])
        self.config = dict(config or {})
        self.train(self.training)

    @property
    def conditioned(self) -> dict[str, str]:
        """{name inside ``network``: kind} of the conditioned layers."""
        return conditioned_layers(self.network)

    def forward(self, x: Tensor, covariates: Tensor | None = None) -> Tensor:
        if not self.uses_covariates:
            out = self.network(x)
        else:
            if covariates is None:
                raise ValueError(f"this {self.config.get('fusion', 'fusion')} model needs covariates: call model(x, covariates)")
            check_covariates(covariates, x.shape[0], self.num_covariates, x.device)
            with use_covariates(covariates):
                out = self.network(x)
        return out.squeeze(-1) if self.out_features == 1 else out

    def train(self, mode: bool = True) -> FusionModel:
        super().train(mode)
        for name in self.frozen_norms:
            self.network.get_submodule(name).train(False)
        return self

    def extra_repr(self) -> str:
        keys = ("backbone", "fusion", "regime", "head")
        return ", ".join(f"{k}={self.config[k]!r}" for k in keys if k in self.config) + f", num_covariates={self.num_covariates}"


def as_layer_list(value: str | int | list | tuple | None) -> str | list[str | int] | None:
    """Normalise a placement: None, a selector ("first"/"last"/"all"), or a list of names / indices.

    Accepts a comma-separated string ("features.0,features.40") and digit strings ("0,2,-1") as indices.
    """
    if value is None or (isinstance(value, str) and value in SELECTORS):
        return value
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[str | int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise UserError(f"layer {item!r} must be a module name or an integer index")
        item = item.strip() if isinstance(item, str) else item
        out.append(int(item) if isinstance(item, str) and item.lstrip("-").isdigit() else item)
    if not out or any(item == "" for item in out):
        raise UserError(f"empty layer name in {value!r}")
    return out


def pick(candidates: list[str], layers: str | list[str | int], what: str, backbone: str) -> list[str]:
    """Resolve a selector or a list of names / indices against ``candidates`` (a UserError if not found)."""
    try:
        return select_names(candidates, layers, what, backbone)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def last_spatial_conv(network: nn.Module) -> str:
    """What ``hybrid_layers: last`` means: the last conv whose kernel is wider than 1 (a ResNet's last
    3x3 of its last block), not a 1x1 shortcut or bottleneck projection that merely comes last in
    definition order (resnet3d-compact and monai-resnet10 define the shortcut after the block's convs)."""
    names = resolve_layers(network, "all")
    modules = dict(network.named_modules())
    spatial = [n for n in names if any(k > 1 for k in getattr(modules[n], "kernel_size", (1,)))]
    return (spatial or names)[-1]


def apply_hybrid(network: nn.Module, spec: BackboneSpec, layers, num_covariates: int, init: str = "zeros") -> list[str]:
    """Make the chosen convs hybrid (W_0, b_0 copied; covariate weights zero by default); their names."""
    layers = as_layer_list(layers)
    if layers is None:
        raise UserError("hybrid_layers is empty: give conv names, indices or first/last/all")
    try:
        names = [last_spatial_conv(network)] if layers == "last" else resolve_layers(network, layers)
        convert(network, names, num_covariates, init=init)
    except ValueError as exc:
        raise UserError(f"hybrid_layers for {spec.name}: {exc}") from None
    return names


def channels_of(module: nn.Module) -> int | None:
    """Output channels of a conv / hybrid conv / BatchNorm, None for other modules."""
    for attr in ("num_features", "out_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


def film_candidates(network: nn.Module) -> list[str]:
    """Where FiLM may go: the BatchNorm layers, or the convs of a backbone without BatchNorm."""
    return norm_names(network) or [n for n, m in network.named_modules() if isinstance(m, CONV_TYPES + HYBRID_TYPES)]


def in_last_stage(names: list[str], network: nn.Module, spec: BackboneSpec) -> list[str]:
    """Those of ``names`` inside the last stage: ResNets under ``layer4``, VGGs after the last max-pool
    but one."""
    stages = stage_ends(network, spec)
    if spec.family == "resnet":
        return [n for n in names if n.startswith(stages[-1] + ".")]
    start = int(stages[-2].rsplit(".", 1)[1])
    return [n for n in names if n.startswith("features.") and int(n.split(".")[1]) > start]


def probe_size(spec: BackboneSpec) -> int:
    """Input side of the dry runs that read channel counts: 64 px for images, a volume backbone's own size."""
    return spec.input_size if spec.spatial_dims == 3 else 64


def last_block_norm(network: nn.Module, spec: BackboneSpec) -> str:
    """The default place of DAFT and FiLM: the norm after conv1 of the last stage's first block (ResNets
    ``layer4.0.bn1``, resnet3d-compact ``layer4.bn1``; VGGs: the first norm of the last conv stage, the
    first conv there without norms), where DAFT's scripts put DAFT (``--film_location 3``)."""
    norms = film_candidates(network)
    return (in_last_stage(norms, network, spec) or norms)[0]


def last_stage_input_channels(network: nn.Module, spec: BackboneSpec, num_covariates: int) -> int:
    """Channels entering the last stage (DAFT's 4 * n_basefilters, the in_channels of its last block):
    the in_channels of the last stage's first conv (a dry run only where the stage has no conv)."""
    convs = [n for n, m in network.named_modules() if isinstance(m, CONV_TYPES + HYBRID_TYPES)]
    inside = in_last_stage(convs, network, spec)
    if inside:
        return network.get_submodule(inside[0]).in_channels
    return output_channels(network, stage_ends(network, spec)[-2], num_covariates, probe_size(spec), spec.in_channels,
                           spec.spatial_dims)


def daft_bottleneck(network: nn.Module, spec: BackboneSpec, num_covariates: int, reduction: float) -> int:
    """DAFT's training code (``daft/cli.py``): int((4 * n_basefilters + K) / bottleneck_factor), at least 1;
    used for DAFT, FiLM and the MLP-concat baseline alike."""
    return max(1, int((last_stage_input_channels(network, spec, num_covariates) + num_covariates) / reduction))


def apply_film(network: nn.Module, spec: BackboneSpec, layers, num_covariates: int, hidden: int | None = None,
               **options) -> list[str]:
    """Wrap each chosen BatchNorm in :class:`FiLMAfter`; their names. The default, :func:`last_block_norm`,
    is covfuse's choice: where DAFT's scripts put DAFT (no DAFT script trains FiLM, and DAFT's CLI
    default for it, ``--film_location 0``, is a block's input, not a norm). ``options``: ``bias``,
    ``init`` of :class:`FiLM`."""
    layers = as_layer_list(layers)
    names = ([last_block_norm(network, spec)] if layers is None
             else pick(film_candidates(network), layers, "film layers (BatchNorm layers)", spec.name))
    for name in names:
        module = network.get_submodule(name)
        set_submodule(network, name, FiLMAfter(module, channels_of(module), num_covariates, hidden, **options))
    return names


def _probe_channels(network: nn.Module, name: str, num_covariates: int, size: int, in_channels: int,
                    spatial_dims: int, inputs: bool) -> int:
    """Channels entering (``inputs``) or leaving module ``name``, from a dry run on zeros in eval mode."""
    module = network.get_submodule(name)
    seen: list[int] = []
    handle = (module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1])) if inputs
              else module.register_forward_hook(lambda m, i, o: seen.append(o.shape[1])))
    modes = {m: m.training for m in network.modules()}
    try:
        network.eval()
        first = next(network.parameters())
        x = torch.zeros(1, in_channels, *(size,) * spatial_dims, dtype=first.dtype, device=first.device)
        with torch.no_grad(), use_covariates(torch.zeros(1, num_covariates, dtype=first.dtype, device=first.device)):
            network(x)
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen[0]


def output_channels(network: nn.Module, name: str, num_covariates: int, size: int = 64,
                    in_channels: int = 3, spatial_dims: int = 2) -> int:
    """Channels of module ``name``'s output, read from a dry run on a zero image (or volume) in eval mode."""
    module = network.get_submodule(name)
    if channels_of(module) is not None:
        return channels_of(module)
    return _probe_channels(network, name, num_covariates, size, in_channels, spatial_dims, inputs=False)


def input_channels(network: nn.Module, name: str, num_covariates: int, size: int = 64,
                   in_channels: int = 3, spatial_dims: int = 2) -> int:
    """Channels entering module ``name``, read from a dry run on a zero image (or volume) in eval mode."""
    return _probe_channels(network, name, num_covariates, size, in_channels, spatial_dims, inputs=True)


def apply_daft(network: nn.Module, spec: BackboneSpec, layer, num_covariates: int, reduction: float = 7.0,
               **options) -> str:
    """Wrap one module in :class:`DAFTAfter`; its name.

    ``layer``: a module name, an index into the stage ends (VGG max-pools, ResNet ``layer1..4``), or
    None for the place of DAFT's scripts (``--film_location 3``, :func:`last_block_norm`: ResNet
    ``layer4.0.bn1``). ``options``: ``hidden``, ``bias``, ``init`` of :class:`DAFT`.
    """
    stages = stage_ends(network, spec)
    if layer is None:
        name = last_block_norm(network, spec)
    elif isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        name = pick(stages, [int(layer)], "stage ends", spec.name)[0]
    else:
        modules = dict(network.named_modules())
        if layer not in modules or layer == "":
            raise UserError(f"daft_layer {layer!r} is not a module of {spec.name}{suggest(layer, stages)}; "
                            f"stage ends: {', '.join(stages)}")
        name = layer
    channels = output_channels(network, name, num_covariates, probe_size(spec), spec.in_channels, spec.spatial_dims)
    set_submodule(network, name, DAFTAfter(network.get_submodule(name), channels, num_covariates, reduction, **options))
    return name


def apply_concat(network: nn.Module, spec: BackboneSpec, num_covariates: int, out_features: int,
                 hidden: int | None = None) -> str:
    """Replace the head by a :class:`ConcatHead` (1 FC reuses the head's weights; 2 FC starts fresh)."""
    head = network.get_submodule(spec.head)
    set_submodule(network, spec.head, ConcatHead(head.in_features, num_covariates, out_features, hidden, image=head))
    return spec.head


# ---- methods from the literature (docs/methods.md): each starts as the image-only model --------------

def apply_mlpcat(network: nn.Module, spec: BackboneSpec, num_covariates: int, out_features: int, hidden: int = 7,
                 init: str = "identity") -> str:
    """Replace the head by an :class:`MLPCatHead` that reuses the head's weights (DAFT's mlpcatmlp baseline)."""
    head = network.get_submodule(spec.head)
    set_submodule(network, spec.head, MLPCatHead(head.in_features, num_covariates, out_features, hidden, image=head,
                                                 init=init))
    return spec.head


def default_hyper_layers(network: nn.Module, spec: BackboneSpec) -> list[str]:
    """HyperFusion's place: the projection-shortcut conv of the last stage (ResNets); else the last conv."""
    convs = [n for n, m in network.named_modules() if type(m) in HYPER_FOR_CONV]
    last_stage = stage_ends(network, spec)[-1] + "."
    shortcut = [n for n in convs if n.startswith(last_stage) and "downsample" in n]
    return shortcut[:1] or convs[-1:]


def apply_hyper(network: nn.Module, spec: BackboneSpec, layers, num_covariates: int, width: int = 8, depth: int = 1,
                **options) -> list[str]:
    """Make the chosen convs hypernetwork convs (W_0 copied, generated part zero); their names.
    ``options``: ``embedding``, ``init``, ``bias`` of :meth:`HyperConv2d.from_conv`."""
    convs = [n for n, m in network.named_modules() if type(m) in HYPER_FOR_CONV]
    layers = as_layer_list(layers)
    names = default_hyper_layers(network, spec) if layers is None else pick(convs, layers, "hyper layers (convolutions)", spec.name)
    for name in names:
        conv = network.get_submodule(name)
        set_submodule(network, name, HYPER_FOR_CONV[type(conv)].from_conv(conv, num_covariates, width=width, depth=depth,
                                                                                  **options))
    return names


def norm_candidates(network: nn.Module) -> list[str]:
    """BatchNorm and InstanceNorm layers, in definition order."""
    return [n for n, m in network.named_modules() if is_norm(m)]


def apply_cond_norm(network: nn.Module, spec: BackboneSpec, layers, num_covariates: int, hidden: int | None = 16,
                    init: str = "identity") -> list[str]:
    """Make the chosen norms conditional (default: all, as de Vries et al. did in their ResNet); their names."""
    names = pick(norm_candidates(network), as_layer_list(layers) or "all", "cond-norm layers (norm layers)", spec.name)
    for name in names:
        set_submodule(network, name, ConditionalNorm(network.get_submodule(name), num_covariates, hidden, init))
    return names


def default_tab_attention_layers(network: nn.Module, spec: BackboneSpec) -> list[str]:
    """Tab-Attention's place: after conv1-BN(-ReLU) of every residual block; VGGs (no blocks): after every
    BatchNorm but the first, as the reference leaves the full-resolution stem out."""
    norms = norm_candidates(network)
    if spec.family == "resnet":
        return [n for n in norms if n.startswith("layer") and n.endswith(".bn1")]
    return norms[1:] or norms


def followed_by_relu(name: str, spec: BackboneSpec) -> bool:
    """Whether a ReLU directly follows norm ``name``: every BatchNorm of a VGG, a ResNet's stem and block ``bn1``."""
    return spec.family != "resnet" or name.rsplit(".", 1)[-1] == "bn1"


def apply_tab_attention(network: nn.Module, spec: BackboneSpec, layers, num_covariates: int,
                        reduction: int = 16, grid: int = 7, relu: bool = True, init: str = "identity") -> list[str]:
    """Put :class:`TabAttention` behind the chosen norms (``relu``: behind the norm and its ReLU); their names."""
    layers = as_layer_list(layers)
    names = (default_tab_attention_layers(network, spec) if layers is None
             else pick(norm_candidates(network), layers, "tab-attention layers (norm layers)", spec.name))
    for name in names:
        module = network.get_submodule(name)
        # Only where a ReLU follows the norm (its output is then the same): elsewhere (a block's bn2 before the
        # residual sum, a shortcut's norm) the gates see the norm's output.
        after_relu = relu and followed_by_relu(name, spec)
        set_submodule(network, name, TabAttentionAfter(module, channels_of(module), num_covariates, spec.spatial_dims,
                                                       relu=after_relu, reduction=reduction, grid=grid, init=init))
    return names


def duanmu_points(network: nn.Module, spec: BackboneSpec) -> tuple[list[str], bool]:
    """Where Duanmu gates go: the inputs of the residual stages (before ``layer1..4``), or, in VGGs, the
    outputs of every stage end but the last (the inputs of stages 2..n); and whether the gate comes before."""
    stages = stage_ends(network, spec)
    return (stages, True) if spec.family == "resnet" else (stages[:-1], False)


def apply_duanmu(network: nn.Module, spec: BackboneSpec, num_covariates: int, hidden: int = 8,
                 init: str = "identity") -> list[str]:
    """Gate the feature maps entering every stage with the Duanmu chain; the gated modules' names."""
    names, before = duanmu_points(network, spec)
    channels = [(input_channels if before else output_channels)(network, name, num_covariates, probe_size(spec),
                                                                 spec.in_channels, spec.spatial_dims) for name in names]
    attention = DuanmuAttention(num_covariates, channels, hidden, offset=1.0 if init == "identity" else 0.0, init=init)
    for index, name in enumerate(names):
        set_submodule(network, name, DuanmuGate(network.get_submodule(name), attention, index, before))
    return names


