"""NIfTI volumes into model inputs the field's way (nibabel + MONAI): the 3-D decoder beside the 2D ones.

As :mod:`covfuse.data.decoders` does for a 2D file, it answers: the header (:func:`volume_shape`, as
``probe``: no voxels read), the voxels as stored (:func:`unreadable_volumes` reads them all, as
``covfuse data verify`` does; :func:`nonfinite_voxels` counts NaN/Inf), and the model input
(:func:`load_volume`, as ``decode_file``), each failure one :class:`~covfuse.errors.UserError` line.

Preprocessing (:func:`transform`, MONAI): load with channel first, reorient to RAS, optionally
resample to an isotropic spacing, bring to S x S x S (``resize``: trilinear/area resize of the
whole field of view; ``crop-pad``: centre crop or zero pad, keeping the voxel size), then normalise
intensities (``zscore`` over the nonzero voxels, i.e. inside the brain of a skull-stripped image,
or ``minmax`` to [0, 1]). Samples carry the volume as float16 (1, S, S, S): half the bytes of
float32, enough precision for z-scores; the model casts on the device.

Like the 2D decoders, importing it loads neither torch nor MONAI (``covfuse data info`` and the
verify workers stay fast); the functions that make tensors import them.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covfuse.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a tensor is made
    import torch

GEOMETRIES = ("resize", "crop-pad")
INTENSITIES = ("zscore", "minmax")


@dataclass(frozen=True)
class Preprocessing:
    """How a NIfTI file becomes a model input (recorded in the cache and the run)."""

    size: int = 64
    geometry: str = "resize"
    intensity: str = "zscore"
    spacing: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise UserError(f"volume size must be an integer >= 8, got {self.size!r}")
        if self.geometry not in GEOMETRIES:
            raise UserError(f"unknown volume geometry {self.geometry!r}; choose from {', '.join(GEOMETRIES)}")
        if self.intensity not in INTENSITIES:
            raise UserError(f"unknown intensity normalisation {self.intensity!r}; choose from {', '.join(INTENSITIES)}")
        if self.spacing is not None and not self.spacing > 0:
            raise UserError(f"spacing must be a positive number of mm or None, got {self.spacing!r}")


def volume_shape(file: Path, where: str = "") -> tuple[int, int, int]:
    """The 3-D shape from the NIfTI header (nibabel; no voxels read). 2-D, 4-D or unreadable: UserError."""
    import nibabel as nib

    prefix = f"{where}: " if where else ""
    try:
        image = nib.load(str(file))
        shape = tuple(int(s) for s in image.shape)
    except FileNotFoundError:
        raise UserError(f"{prefix}volume file {file} not found") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged file
        raise UserError(f"{prefix}cannot read {file} as NIfTI ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise UserError(f"{prefix}{file} is {len(shape)}-D with shape {shape}; a 3-D volume (X, Y, Z) is expected")
    return shape  # type: ignore[return-value]


def transform(settings: Preprocessing):
    """The MONAI pipeline: file -> float32 tensor (1, S, S, S)."""
    from monai import transforms as T

    # LoadImage builds every reader MONAI knows; with pydicom installed (covfuse reads 2D DICOM) its
    # GPU-codec DICOM reader warns at each construction that nvImageCodec is absent. Volumes are
    # NIfTI and never reach that reader, so the notice says nothing to a covfuse user.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        load = T.LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
    steps = [load, T.Lambda(finite),  # NaN/Inf -> 0 before anything mixes voxels (data.nonfinite)
             T.Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))]
    if settings.spacing is not None:
        steps.append(T.Spacing(pixdim=settings.spacing, mode="bilinear"))
    size = (settings.size,) * 3
    steps.append(T.Resize(size, mode="trilinear") if settings.geometry == "resize" else T.ResizeWithPadOrCrop(size))
    if settings.intensity == "zscore":
        steps.append(T.NormalizeIntensity(nonzero=True))
    else:
        steps.append(T.ScaleIntensity(minv=0.0, maxv=1.0))
    steps.append(T.EnsureType(data_type="tensor", track_meta=False))
    return T.Compose(steps)


def finite(x):
    """NaN and +-Inf voxels set to 0 (the background SPM/FSL mask with NaN), before resizing or
    normalising spreads them: one NaN would make the whole z-scored volume NaN."""
    import torch

    return torch.nan_to_num(torch.as_tensor(x), nan=0.0, posinf=0.0, neginf=0.0)


def nonfinite_voxels(file: Path) -> int:
    """How many voxels of a NIfTI file are NaN or +-Inf (nibabel, as stored after scaling); only
    floating-point files are read, since integer voxels are finite by construction."""
    import nibabel as nib

    image = nib.load(str(file))
    dtype = np.dtype(image.get_data_dtype())
    slope, inter = (image.header.get_slope_inter() if hasattr(image.header, "get_slope_inter") else (None, None))
    scaled = any(v is not None and not np.isfinite(v) for v in (slope, inter))
    if dtype.kind not in "fc" and not scaled:
        return 0
    try:
        return int((~np.isfinite(np.asanyarray(image.dataobj))).sum())
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip raise many types for a damaged file
        raise UserError(f"{file}: cannot read the volume ({_reason(exc)}); `covfuse data verify ROOT` names every "
                        "such file") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause of ``exc`` in one short line (MONAI wraps a reader's error in "applying transform <...>")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]


def unreadable_volumes(files: list[str]) -> list[tuple[str, str]]:
    """Worker (``covfuse data verify``, ``--skip_corrupt``): read every voxel of each NIfTI file (nibabel);
    (file, reason) for those that fail."""
    import nibabel as nib

    bad = []
    for file in files:
        try:
            np.asanyarray(nib.load(file).dataobj)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged file
            bad.append((file, _reason(exc)))
    return bad


def load_volume(file: Path, settings: Preprocessing, pipeline=None) -> torch.Tensor:
    """One preprocessed volume, a float32 tensor (1, S, S, S); an unreadable or non-3-D file is a UserError."""
    import torch

    volume_shape(file)
    pipeline = pipeline or transform(settings)
    try:
        x = pipeline(str(file))
    except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError
        raise UserError(f"cannot preprocess {file} ({_reason(exc)}); `covfuse data verify ROOT` names every such file") from None
    return torch.as_tensor(x, dtype=torch.float32).reshape(1, *(settings.size,) * 3)


def library() -> str:
    """What reads the volumes, for the cache's record: nibabel through MONAI's LoadImage."""
    return f"nibabel {version('nibabel')} (MONAI {version('monai')} LoadImage)"
