"""Backbones: torchvision VGG/ResNet, a CPU-sized ``vgg-mini`` and the 3D ResNets of
:mod:`covfuse.models.volumetric`; their weights, heads and regimes.

Weights are resolved in one place, :func:`load_weights`: ``None`` (random init), ``"imagenet"``
(torchvision's published weights, read only from the torch hub cache, never downloaded here) or a
path to a state-dict file. The task head replaces the backbone's last Linear after loading.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from covfuse.errors import UserError
from covfuse.io import load_trusted
from covfuse.models.registry import BackboneSpec, backbone_spec, head_outputs
from covfuse.models.volumetric import instantiate_3d

NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class VGGMini(nn.Module):
    """A VGG in miniature: conv3x3-BN-ReLU-maxpool stages, global average pooling, a 2-layer classifier.

    About 0.11M parameters with the default widths and one output, fast on a CPU; any input side
    >= 16 works.
    Module names follow torchvision's VGG (``features.*``, ``avgpool``, ``classifier.*``) so the
    same placements, regimes and tools apply.
    """

    def __init__(self, num_classes: int = 1000, widths: tuple[int, ...] = (16, 32, 64, 128), hidden: int = 128,
                 dropout: float = 0.2, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def instantiate(spec: BackboneSpec) -> nn.Module:
    """The backbone with random weights and its original 1000-class head."""
    if spec.spatial_dims == 3:
        return instantiate_3d(spec.name)
    if spec.torchvision is None:
        return VGGMini()
    import torchvision  # lazy: only torchvision backbones need it (vgg-mini and 3D runs never do)

    return torchvision.models.get_model(spec.torchvision, weights=None)


def imagenet_checkpoint(spec: BackboneSpec) -> tuple[Path, str]:
    """(expected path in the torch hub cache, URL) of torchvision's default ImageNet weights."""
    if not spec.imagenet:
        raise UserError(f"there are no ImageNet weights for {spec.name}; use weights=None or a state-dict path")
    import torchvision  # lazy: only torchvision backbones need it (vgg-mini and 3D runs never do)

    url = torchvision.models.get_model_weights(spec.torchvision).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path), url


def read_state_dict(weights: str | os.PathLike, spec: BackboneSpec) -> dict[str, Tensor]:
    """The state dict for ``weights`` ("imagenet" or a file path), loaded safely (``weights_only``)."""
    if weights == "imagenet":
        path, url = imagenet_checkpoint(spec)
        if not path.is_file():
            raise UserError(
                f"ImageNet weights for {spec.name} are not in the torch hub cache and covfuse never downloads: "
                f"fetch {url} on a machine with network and put {path.name} in {path.parent} "
                "(TORCH_HOME moves that folder), or use weights=None"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"weights file {str(path)!r} not found; give a state-dict file, 'imagenet' or None")
    state = load_trusted(path, what="weights file")  # weights_only=True; one-line errors for pickles and truncation
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    for prefix in ("module.", "network."):  # DataParallel, covfuse's own wrapper
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_state(model: nn.Module, spec: BackboneSpec, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` (already carrying its task head); head tensors of another shape are
    dropped (an ImageNet 1000-class head: the head is replaced), any other mismatch is a UserError."""
    own = model.state_dict()
    head = spec.head + "."
    state = {k: v for k, v in state.items() if not (k.startswith(head) and k in own and own[k].shape != v.shape)}
    # The head is fresh anyway; old checkpoints lack BatchNorm's num_batches_tracked.
    missing = [k for k in own if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
        raise UserError(f"weights {source!r} do not fit {spec.name} ({'; '.join(parts)}); "
                        "is it a state dict of another backbone?")
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    for name, buffer in list(model.named_buffers()):  # num_batches_tracked absent from old checkpoints
        if buffer.is_meta:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, torch.zeros_like(buffer, device="cpu"))
    if any(p.is_meta for p in model.parameters()):  # pragma: no cover - load_state checked the keys
        raise RuntimeError(f"parameters of {spec.name} were left unloaded")


def replace_head(model: nn.Module, spec: BackboneSpec, out_features: int) -> None:
    """Swap the backbone's last Linear for a fresh ``Linear(in_features, out_features)``."""
    old = model.get_submodule(spec.head)
    set_submodule(model, spec.head, nn.Linear(old.in_features, out_features, device="cpu"))


def build_backbone(name: str, *, weights: str | os.PathLike | None = None, head: str = "binary",
                   num_classes: int | None = None) -> nn.Module:
    """A backbone with ``weights`` loaded and its head replaced by ``head`` ("binary"/"regression"/"survival":
    1 output, "two-class": 2 outputs, as the research's ``classifier[6] = Linear(4096, 2)``, "multiclass": ``num_classes``)."""
    spec = backbone_spec(name)
    out_features = head_outputs(head, num_classes)
    if weights is None:
        model = instantiate(spec)
        replace_head(model, spec, out_features)
        return model
    state = read_state_dict(weights, spec)
    # Built on the meta device, so no time goes into a random init that the weights overwrite;
    # the fresh head is created for real and the loaded tensors are assigned in place.
    with torch.device("meta"):
        model = instantiate(spec)
    replace_head(model, spec, out_features)
    load_state(model, spec, state, str(weights))
    return model


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted, as in ``named_modules``) by ``module``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def norm_names(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, NORM_TYPES)]


def stage_ends(model: nn.Module, spec: BackboneSpec) -> list[str]:
    """Modules that end a stage (resolution halves after them): VGG max-pools, ResNet ``layer1..4``."""
    if spec.family == "resnet":
        return ["layer1", "layer2", "layer3", "layer4"]
    return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]


def apply_regime(network: nn.Module, spec: BackboneSpec, regime: str, conditioning: list[str]) -> list[str]:
    """Set ``requires_grad`` for ``regime`` and return the BatchNorm layers it leaves frozen.

    ``finetune``/``scratch``: everything trains. ``features-frozen``: ``spec.classifier`` (VGG's
    three-layer classifier, ResNet's ``fc``) trains. ``linear-probe``: ``spec.head`` (the last layer)
    trains. Under both frozen regimes the modules named in ``conditioning`` train in full (a hybrid
    conv's W_0 and bias included, FiLM/DAFT generators, the concat head). The returned BatchNorm
    layers hold no trainable parameter; :class:`covfuse.models.fusion.FusionModel` keeps them in eval
    mode, so their running statistics stay those of the loaded weights.
    """
    roots = {"features-frozen": [spec.classifier], "linear-probe": [spec.head]}.get(regime)
    if roots is None:
        network.requires_grad_(True)
        return []
    roots = [*roots, *conditioning]
    for name, param in network.named_parameters():
        param.requires_grad_(any(name.startswith(root + ".") for root in roots))
    return [n for n, m in network.named_modules()
            if isinstance(m, NORM_TYPES) and not any(p.requires_grad for p in m.parameters())]
