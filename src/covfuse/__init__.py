"""covfuse: CNNs whose convolutions are conditioned on per-sample structured covariates."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["HybridConv1d", "HybridConv2d", "HybridConv3d", "convert", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `covfuse --help` and the data commands start without importing torch.
    if name in __all__:
        from covfuse import layers  # lazy: `import covfuse` stays torch-free (the CLI's data commands)

        return getattr(layers, name)
    raise AttributeError(f"module 'covfuse' has no attribute {name!r}")
