"""Image preset definitions (torch-free, so the command line can list them without importing torch).

See :mod:`covfuse.data.transforms` for what each preset does and why.
"""
from __future__ import annotations

import numpy as np

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
