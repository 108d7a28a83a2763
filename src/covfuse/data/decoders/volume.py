"""Volumes into model inputs the field's way (nibabel, pydicom + MONAI): the 3-D decoder beside the 2D ones.

One reader per kind of volume, picked by what the path is (:data:`READERS`, as the 2D decoders are
picked by magic bytes): a folder or a file with DICOM's marker is DICOM (a series of slices, or one
enhanced multi-frame file: :mod:`covfuse.data.decoders.dicom_volumes`), any other file is nibabel's
(NIfTI, FreeSurfer MGH, Analyze: :mod:`covfuse.data.decoders.nibabel_volumes`). Every reader gives a
:class:`~covfuse.data.decoders.base.VolumeSource`: the shape and RAS affine from the header, and the
voxels. Where a path holds several volumes, :class:`Choice` says which (data.series: the DICOM series of
a folder holding several; data.volume_index: one volume of a 4-D file); without it such a path is
refused in one line naming the option.

As :mod:`covfuse.data.decoders` does for a 2D file, this module answers: the header
(:func:`volume_shape`, as ``probe``: no voxels read), the voxels as stored (:func:`read_volume`;
:func:`unreadable_volumes` reads them all, as ``covfuse data verify`` does; :func:`nonfinite_voxels`
counts NaN/Inf), and the model input (:func:`load_volume`, as ``decode_file``), each failure one
:class:`~covfuse.errors.UserError` line.

Preprocessing (:func:`transform`, MONAI): the volume with channel first and its affine (:func:`as_tensor`),
reoriented to RAS, optionally resampled to an isotropic spacing, brought to S x S x S (``resize``: trilinear/area
resize of the whole field of view; ``crop-pad``: centre crop or zero pad, keeping the voxel size), then
intensities normalised (``zscore`` over the nonzero voxels, i.e. inside the brain of a skull-stripped
image, or ``minmax`` to [0, 1]). Samples carry the volume as float16 (1, S, S, S): half the bytes of
float32, enough precision for z-scores; the model casts on the device.

Like the 2D decoders, importing it loads neither torch nor MONAI (``covfuse data info`` and the
verify workers stay fast); the functions that make tensors import them.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covfuse.data.decoders.base import UnreadableVolume, VolumeReader, VolumeSource
from covfuse.data.decoders.dicom_volumes import DicomVolumes
from covfuse.data.decoders.nibabel_volumes import NibabelVolumes
from covfuse.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - torch is imported where a tensor is made
    import torch

GEOMETRIES = ("resize", "crop-pad")
INTENSITIES = ("zscore", "minmax")
#: The order of evidence: a folder or DICOM's marker first (DICOM volumes), then whatever nibabel reads.
READERS: list[VolumeReader] = [DicomVolumes(), NibabelVolumes()]
KINDS = "a NIfTI (.nii, .nii.gz), MGH (.mgz, .mgh) or Analyze (.hdr/.img) file, a folder of DICOM slices, " \
        "or a multi-frame DICOM file"


@dataclass(frozen=True)
class Choice:
    """Which volume a path means where it holds several: ``series`` (data.series) picks the DICOM series of a
    folder by SeriesInstanceUID or SeriesDescription; ``volume_index`` (data.volume_index) one volume of a
    4-D file (0 the first, -1 the last). None: such a path is refused, naming the option."""

    series: str | None = None
    volume_index: int | None = None

    def __post_init__(self) -> None:
        if self.series is not None and (not isinstance(self.series, str) or not self.series.strip()):
            raise UserError(f"data.series must be a SeriesInstanceUID or a series description, got {self.series!r}")
        index = self.volume_index
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise UserError(f"data.volume_index must be an integer (0 the first volume, -1 the last), got "
                            f"{self.volume_index!r}")


@dataclass(frozen=True)
class Preprocessing:
    """How a volume becomes a model input (recorded in the cache and the run); ``series`` and ``volume_index``
    are the :class:`Choice` of volume."""

    size: int = 64
    geometry: str = "resize"
    intensity: str = "zscore"
    spacing: float | None = None
    series: str | None = None
    volume_index: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 8:
            raise UserError(f"volume size must be an integer >= 8, got {self.size!r}")
        if self.geometry not in GEOMETRIES:
            raise UserError(f"unknown volume geometry {self.geometry!r}; choose from {', '.join(GEOMETRIES)}")
        if self.intensity not in INTENSITIES:
            raise UserError(f"unknown intensity normalisation {self.intensity!r}; choose from {', '.join(INTENSITIES)}")
        if self.spacing is not None and not self.spacing > 0:
            raise UserError(f"spacing must be a positive number of mm or None, got {self.spacing!r}")
        self.choice  # validates series and volume_index

    @property
    def choice(self) -> Choice:
        return Choice(self.series, self.volume_index)

    def record(self) -> dict:
        """The settings as the volume cache's name and key hold them: without the choice of volume where it is
        unset, so a cache built before the choice existed is still found."""
        return {"size": self.size, "geometry": self.geometry, "intensity": self.intensity, "spacing": self.spacing,
                **({"series": self.series} if self.series is not None else {}),
                **({"volume_index": self.volume_index} if self.volume_index is not None else {})}


def reader_for(path: Path) -> VolumeReader:
    """The reader of ``path`` (see :data:`READERS`), from what it is: a folder, or a file's first bytes."""
    head = b""
    if not path.is_dir():
        with open(path, "rb") as f:
            head = f.read(132)
        if not head:
            raise UnreadableVolume(path, "empty file, 0 bytes")
    return next(r for r in READERS if r.accepts(path, head))


def open_volume(file: Path, where: str = "", choice: Choice = Choice()) -> tuple[VolumeSource, int | None]:
    """The volume at ``file`` from its header (no voxels read) and the index of the volume to read along a
    4-D file's last axis (None: the file is 3-D). Missing, unreadable, 2-D, 5-D, or holding several
    volumes without a :class:`Choice`: one UserError line, prefixed by ``where`` (a manifest line)."""
    file = Path(file)
    prefix = f"{where}: " if where else ""
    kind = "a volume"
    try:
        reader = reader_for(file)
        kind = reader.kind
        source = reader.open(file, choice.series)
    except FileNotFoundError:
        raise UserError(f"{prefix}volume file {file} not found") from None
    except UnreadableVolume as exc:
        raise UserError(f"{prefix}{exc}") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel and pydicom raise many types for a damaged file
        raise UserError(f"{prefix}cannot read {file} as {kind} ({_reason(exc)[:140]}); covfuse reads {KINDS}") from None
    shape = source.shape
    if len(shape) == 4 and shape[3] == 1:
        return source, 0
    if len(shape) == 4 and min(shape[:3]) >= 2:
        count, index = shape[3], choice.volume_index
        dims = "x".join(map(str, shape))
        if index is None:
            raise UserError(f"{prefix}{file} holds {count} volumes (4-D, {dims}); choose one with data.volume_index "
                            f"(0 to {count - 1}, -1 the last; `covfuse data info --volume_index N`)")
        if not -count <= index < count:
            raise UserError(f"{prefix}data.volume_index {index} is outside {file}'s {count} volumes (4-D, {dims}); "
                            f"use 0 to {count - 1}, or -1 for the last")
        return source, index % count
    if len(shape) != 3 or min(shape) < 2:
        raise UserError(f"{prefix}{file} is {len(shape)}-D with shape {shape}; a 3-D volume (X, Y, Z) is expected")
    return source, None


def volume_shape(file: Path, where: str = "", choice: Choice = Choice()) -> tuple[int, int, int]:
    """The 3-D shape of the volume ``choice`` picks at ``file``, from its header(s); errors as :func:`open_volume`."""
    source, _ = open_volume(file, where, choice)
    return tuple(int(s) for s in source.shape[:3])  # type: ignore[return-value]


def read_volume(file: Path, choice: Choice = Choice()) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, affine): the volume as float32 (X, Y, Z) in the file's own voxel order, and its voxel -> RAS mm
    affine (nibabel's convention). A damaged file raises the library's own error (the callers name it)."""
    source, index = open_volume(file, "", choice)
    return np.asarray(source.voxels(index), dtype=np.float32), source.affine


def volume_files(path: Path) -> list[Path]:
    """Every file a volume at ``path`` may be read from, found without reading any: the files of a folder
    (a DICOM series), an Analyze image with its header (and SPM's .mat), else the file. The volume cache
    stamps them, so a slice rewritten in place is a changed volume."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    name = path.name.lower()
    for own, other in ((".img", ".hdr"), (".hdr", ".img"), (".img.gz", ".hdr.gz"), (".hdr.gz", ".img.gz")):
        if name.endswith(own):
            stem = path.name[: -len(own)]
            partners = [path.with_name(stem + s) for s in (other, other.upper(), ".mat")]
            return [path, *(p for p in partners if p.is_file())]
    return [path]


def transform(settings: Preprocessing):
    """The MONAI pipeline: a volume as :func:`as_tensor` gives it -> float32 tensor (1, S, S, S)."""
    from monai import transforms as T

    steps = [T.Lambda(finite),  # NaN/Inf -> 0 before anything mixes voxels (data.nonfinite)
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


def as_tensor(voxels: np.ndarray, affine: np.ndarray, file: Path):
    """A MONAI MetaTensor (1, X, Y, Z) float32 carrying the RAS affine: what MONAI's
    ``LoadImage(ensure_channel_first=True)`` gives for a NIfTI file, for every kind of volume (LoadImage
    would stack a DICOM folder in InstanceNumber order; see dicom_volumes)."""
    import torch
    from monai.data import MetaTensor

    return MetaTensor(torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32)[None]),
                      affine=torch.as_tensor(affine, dtype=torch.float64),
                      meta={"space": "RAS", "filename_or_obj": str(file)})


def finite(x):
    """NaN and +-Inf voxels set to 0 (the background SPM/FSL mask with NaN), before resizing or
    normalising spreads them: one NaN would make the whole z-scored volume NaN."""
    import torch

    return torch.nan_to_num(torch.as_tensor(x), nan=0.0, posinf=0.0, neginf=0.0)


def nonfinite_voxels(file: Path, choice: Choice = Choice(), where: str = "") -> int:
    """How many voxels of the volume are NaN or +-Inf (as stored after scaling); only floating-point
    volumes are read, since integer voxels are finite by construction. Errors as :func:`open_volume`."""
    source, index = open_volume(file, where, choice)
    if not source.floating:
        return 0
    try:
        return int((~np.isfinite(source.voxels(index))).sum())
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip/pydicom raise many types for a damaged file
        raise UserError(f"{file}: cannot read the volume ({_reason(exc)}); `covfuse data verify ROOT` names every "
                        "such file") from None


def _reason(exc: BaseException) -> str:
    """The innermost cause of ``exc`` in one short line (MONAI wraps a reader's error in "applying transform <...>");
    a covfuse error is its own message."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, UserError):
        return " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]


def unreadable_volumes(files: list[str], choice: Choice = Choice()) -> list[tuple[str, str]]:
    """Worker (``covfuse data verify``, ``--skip_corrupt``): read every voxel of each volume; (file, reason)
    for those that fail."""
    bad = []
    for file in files:
        try:
            source, index = open_volume(Path(file), "", choice)
            source.voxels(index)
        except Exception as exc:  # noqa: BLE001 - nibabel/pydicom raise many types for a damaged file
            bad.append((file, _reason(exc)))
    return bad


def load_volume(file: Path, settings: Preprocessing, pipeline=None) -> torch.Tensor:
    """One preprocessed volume, a float32 tensor (1, S, S, S): read once (its header(s), then its voxels),
    then ``pipeline`` (:func:`transform`); an unreadable or non-3-D file is a UserError."""
    import torch

    source, index = open_volume(file, "", settings.choice)
    pipeline = pipeline or transform(settings)
    try:
        x = pipeline(as_tensor(source.voxels(index), source.affine, file))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel/pydicom/gzip errors, or MONAI's wrapper around a step's
        raise UserError(f"cannot preprocess {file} ({_reason(exc)}); `covfuse data verify ROOT` names every such file") from None
    return torch.as_tensor(x, dtype=torch.float32).reshape(1, *(settings.size,) * 3)


def library() -> str:
    """What reads the volumes, for the cache's record."""
    return f"nibabel {version('nibabel')} and pydicom {version('pydicom')} (MONAI {version('monai')} transforms)"
