"""Models: a backbone (torchvision VGG/ResNet, vgg-mini, 3D ResNets) plus a fusion method, built by
name with :func:`build` and rebuilt from a checkpoint's config with :func:`build_from_config`."""
from covfuse.models.builder import OPTIONS, build, build_from_config
from covfuse.models.fusion import FusionModel
from covfuse.models.registry import list_backbones, list_fusions

__all__ = [
    "OPTIONS",
    "FusionModel",
    "build",
    "build_from_config",
    "list_backbones",
    "list_fusions",
]
