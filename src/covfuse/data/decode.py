"""Presets and JPEG/PIL decoding into uint8 arrays, without importing torch: the command line and the
cache's worker processes import this in a fraction of a second instead of ~3 s (only enlarging an
image, :func:`_upsample`, loads torch).

Presets (both normalise with mean = std = 0.5 per channel, i.e. x / 127.5 - 1, on the device:
:func:`covfuse.data.transforms.normalize`, whose module says why 0.5/0.5):

* ``"center-crop"`` (default): the central square of side min(W, H) (178×178 for the release's
  178×218 images, which keeps the whole aligned face and drops the background above and below),
  resized to S×S. Square pixels: faces keep their proportions.
* ``"research"``: the whole image resized to S×S without cropping, like the original research's
  ``Resize((224, 224))``; faces are squeezed vertically by 178/218.

Colour JPEGs are decoded by simplejpeg (libjpeg-turbo) at a reduced scale when the target is
that much smaller, which is most of the cost saved at 64 px (see docs/performance.md); other
images by PIL with ``Image.draft`` (1/2, 1/4 or 1/8 scale for JPEG). torchvision.io's JPEG decoder
is deprecated in torchvision 0.29, so we do not use it.
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
import simplejpeg
from PIL import Image

from covfuse.errors import UserError, suggest

PRESETS: dict[str, dict] = {
    "center-crop": {"crop": "square", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "research": {"crop": "none", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
}
DEFAULT_PRESET = "center-crop"


def check_preset(preset: str) -> str:
    """Return ``preset`` if known, else raise a :class:`UserError` with the closest name."""
    if preset not in PRESETS:
        raise UserError(f"unknown image preset {preset!r}{suggest(str(preset), PRESETS)}; choose from {', '.join(PRESETS)}")
    return preset


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 8:
        raise UserError(f"image size must be an integer of at least 8 pixels, got {size!r}")
    return int(size)


def crop_box(width: int, height: int, preset: str) -> tuple[float, float, float, float]:
    """The region of a ``width``×``height`` image that the preset resizes to S×S."""
    if PRESETS[check_preset(preset)]["crop"] == "none":
        return (0.0, 0.0, float(width), float(height))
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


class CorruptImage(UserError):
    """An image file that does not decode; the message names it and says what to do."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot decode the image ({reason}); replace or remove it (`covfuse data verify ROOT` "
                         "lists them all; `covfuse fit --skip_corrupt` trains without them)")


def decode_image(path: str | os.PathLike, size: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
    """Decode a JPEG (or any PIL image) into a uint8 array (3, size, size) per ``preset``.

    A missing, empty, truncated or non-image file raises :class:`CorruptImage` naming the file.
    """
    try:
        return _decode_image(path, size, preset)
    except FileNotFoundError:
        raise CorruptImage(path, "the file is missing") from None
    except IsADirectoryError:
        raise CorruptImage(path, "a folder, not an image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImage(path, _reason(path, exc)) from None


def _reason(path, exc: BaseException) -> str:
    try:
        if os.path.getsize(path) == 0:
            return "empty file, 0 bytes"
    except OSError:
        pass
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file"  # PIL's own text names a BytesIO, not the file
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def _decode_image(path: str | os.PathLike, size: int, preset: str = DEFAULT_PRESET) -> np.ndarray:
    with open(path, "rb") as f:  # one read instead of PIL's ~40 small ones (matters on network disks)
        data = f.read()
    if data[:2] == b"\xff\xd8":
        out = _decode_jpeg_turbo(data, size, preset)
        if out is not None:
            return out
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        left, top, right, bottom = crop_box(width, height, preset)
        # Ask libjpeg for the smallest power-of-two reduction that keeps the crop >= size pixels.
        need_w = math.ceil(size * width / (right - left))
        need_h = math.ceil(size * height / (bottom - top))
        drafted = img.draft("RGB", (need_w, need_h))
        # draft returns the original extent in reduced pixels (e.g. 178/4 = 44.5 for a 45-pixel
        # wide result); scaling the crop box by it, not by the rounded-up size, keeps it exact.
        fx, fy = (drafted[1][2] / width, drafted[1][3] / height) if drafted else (1.0, 1.0)
        if img.mode != "RGB":
            img = img.convert("RGB")
        out = img.resize((size, size), Image.BILINEAR, box=(left * fx, top * fy, right * fx, bottom * fy))
    return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))


def _decode_jpeg_turbo(data: bytes, size: int, preset: str) -> np.ndarray | None:
    """Colour JPEGs via simplejpeg (libjpeg-turbo), or None to let PIL do it (grey/CMYK, errors).

    Faster than PIL's ``draft`` path: ~4,300 vs ~3,000 images/CPU-s at 64 px on 178x218 (less
    parsing overhead, and libjpeg-turbo's M/8 scales, e.g. 3/8, instead of PIL's powers of two).
    """
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "RGB"):
            return None
        left, top, right, bottom = crop_box(width, height, preset)
        need_w = math.ceil(size * width / (right - left))
        need_h = math.ceil(size * height / (bottom - top))
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False,
                                     min_height=need_h, min_width=need_w)
    except (ValueError, RuntimeError, OSError):  # PIL's fallback path raises the usual error for bad files
        return None
    out_h, out_w = arr.shape[:2]
    # libjpeg scales by num/8 and rounds the size up (178 * 3/8 = 66.75 -> 67): scale the crop box by
    # num/8, not by the rounded size, to keep it exact (as the PIL path does with draft's extent).
    nums = [n for n in range(1, 17) if -(-width * n // 8) == out_w and -(-height * n // 8) == out_h]
    fx, fy = (nums[0] / 8, nums[0] / 8) if len(nums) == 1 else (out_w / width, out_h / height)
    box = (left * fx, top * fy, right * fx, bottom * fy)
    if all(float(b).is_integer() for b in box) and min(box[2] - box[0], box[3] - box[1]) <= size:
        return _upsample(arr, tuple(int(b) for b in box), size)
    img = Image.fromarray(arr)
    out = img.resize((size, size), Image.BILINEAR, box=box)
    return np.ascontiguousarray(np.asarray(out).transpose(2, 0, 1))


def _upsample(arr: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Bilinear enlargement of a whole-pixel crop (e.g. CelebA's 178-px square to 224) in one pass
    straight to (3, size, size): torch's uint8 channels-last kernel, 2.4x faster than PIL's resize
    plus the HWC->CHW copy (330 vs 800 us per image, docs/performance.md) and within 2 grey levels of
    it (for enlarging, PIL's bilinear filter is plain bilinear interpolation). Imports torch, so the
    torch-free callers pay its import once, only when they enlarge."""
    import torch
    import torch.nn.functional as F

    left, top, right, bottom = box
    x = torch.from_numpy(arr[top:bottom, left:right]).permute(2, 0, 1).unsqueeze(0)  # a strided view, no copy
    out = torch.empty((1, 3, size, size), dtype=torch.uint8)
    out.copy_(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False))
    return out[0].numpy()
