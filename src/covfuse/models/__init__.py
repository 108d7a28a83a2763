"""Models: torchvision backbones plus a fusion method, built by name with :func:`build`."""
from covfuse.models.backbones import VGGMini, build_backbone
from covfuse.models.builder import OPTIONS, build, build_from_config
from covfuse.models.fusion import ConcatHead, CovariateClassifier, FusionModel, conditioned_layers
from covfuse.models.registry import list_backbones, list_fusions

__all__ = [
    "OPTIONS",
    "ConcatHead",
    "CovariateClassifier",
    "FusionModel",
    "VGGMini",
    "build",
    "build_backbone",
    "build_from_config",
    "conditioned_layers",
    "list_backbones",
    "list_fusions",
]
