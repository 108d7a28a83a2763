"""covfuse: CNNs whose convolutions are conditioned on per-sample structured covariates."""
from covfuse.layers import HybridConv1d, HybridConv2d, HybridConv3d, convert

__version__ = "0.1.0"
__all__ = ["HybridConv1d", "HybridConv2d", "HybridConv3d", "convert", "__version__"]
