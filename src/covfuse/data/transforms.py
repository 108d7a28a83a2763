"""Image tensors as the datasets serve them (uint8 or uint16): left-right flips before normalising, and
normalisation on the device.

Decoding and the presets live in :mod:`covfuse.data.decode`. Every preset normalises with
mean = std = 0.5 per channel (x / 127.5 - 1 for 8-bit images, x / 32767.5 - 1 for 16-bit ones).
Why 0.5/0.5 rather than ImageNet's statistics for pretrained backbones: the original research used
it (so its numbers stay comparable), CelebA's channel means (≈0.50/0.42/0.38) are no closer to
ImageNet's (0.485/0.456/0.406) than 0.5 is in the ways that matter once fine-tuning with BatchNorm
adapts the first layers, and one convention for every preset keeps cached images independent of
the backbone. Normalisation happens on the device, so changing it later costs nothing in the cache.
"""
from __future__ import annotations

import torch

from covfuse.data.decode import DEFAULT_PRESET, PRESETS, check_preset


def model_input(images: torch.Tensor, preset: str = DEFAULT_PRESET, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """What the model is fed for a batch as a dataset serves it: 2D integer images normalised by :func:`normalize`;
    volumes as they come (float16, their intensities normalised by the volume preprocessing), cast to ``dtype``."""
    if images.is_floating_point():
        return images.to(dtype)
    return normalize(images, preset, dtype)


def hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror images (…, H, W) left-right (training augmentation, on the stored integers before normalising)."""
    return images.flip(-1)


def normalize(images: torch.Tensor, preset: str = DEFAULT_PRESET, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 or uint16 images (N, C, H, W) or (C, H, W), C = 3 or 1, on any device → float
    ``(x / max - mean) / std`` with max 255 (8-bit) or 65535 (16-bit), always 3 channels.

    A greyscale image is repeated into the three channels after normalising, so RGB backbones
    and their ImageNet weights take it unchanged (the first conv then sees the grey value in R, G
    and B, which is how torchvision's weights treat a grey photo). One new tensor (the conversion)
    and two in-place passes over it: the out-of-place form allocated three full-size tensors (2.5x
    slower on CPU at 224 px, docs/performance.md).
    """
    p = PRESETS[check_preset(preset)]
    scale = 65535 if images.dtype == torch.uint16 else 255
    x = images.to(dtype, memory_format=torch.preserve_format)
    if x.data_ptr() == images.data_ptr():  # already that dtype: never modify the caller's tensor
        x = x.clone()
    channels = x.shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    shape = (channels, 1, 1)
    mean = torch.tensor(p["mean"][:channels], dtype=dtype, device=x.device).view(shape) * scale
    std = torch.tensor(p["std"][:channels], dtype=dtype, device=x.device).view(shape) * scale
    x = x.sub_(mean).div_(std)
    if channels == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()
    return x
