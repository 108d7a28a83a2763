"""Reading NIfTI volumes the field's way (nibabel + MONAI transforms), a float16 memmap cache, the dataset.

Preprocessing (:func:`preprocess`, MONAI): load with channel first, reorient to RAS, optionally
resample to an isotropic spacing, bring to S x S x S (``resize``: trilinear/area resize of the
whole field of view; ``crop-pad``: centre crop or zero pad, keeping the voxel size), then normalise
intensities (``zscore`` over the nonzero voxels, i.e. inside the brain of a skull-stripped image,
or ``minmax`` to [0, 1]). Samples carry the volume as float16 (1, S, S, S): half the bytes of
float32, enough precision for z-scores; the model casts on the device.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from covfuse.errors import UserError

log = logging.getLogger(__name__)

GEOMETRIES = ("resize", "crop-pad")
INTENSITIES = ("zscore", "minmax")
CACHE_DIRNAME = ".covfuse-cache"
FORMAT = "covfuse-volume-cache"
VERSION = 1


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
    import logging
    import warnings

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
    """One preprocessed volume, float32 (1, S, S, S); an unreadable or non-3-D file is a UserError."""
    volume_shape(file)
    pipeline = pipeline or transform(settings)
    try:
        x = pipeline(str(file))
    except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError
        raise UserError(f"cannot preprocess {file} ({_reason(exc)}); `covfuse data verify ROOT` names every such file") from None
    return torch.as_tensor(x, dtype=torch.float32).reshape(1, *(settings.size,) * 3)


# ----------------------------------------------------------------------------------- cache
def _key(files: Sequence[Path], settings: Preprocessing) -> str:
    """Identifies the cache's content: every file's path, size and mtime, and the preprocessing."""
    h = hashlib.sha1(json.dumps(asdict(settings), sort_keys=True).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class VolumeCache:
    """float16 memmap (N, 1, S, S, S), row i = files[i] preprocessed; ``cache[i]`` is a tensor."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = Path(path), info
        self.shape = tuple(info["shape"])
        self._array: np.memmap | None = None

    def _data(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.float16, mode="r", shape=self.shape)
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._data()[row]))

    def __getstate__(self) -> dict:  # worker processes reopen the memmap; no voxels are pickled
        return {"path": self.path, "info": self.info, "shape": self.shape, "_array": None}


def cache_paths(files: Sequence[Path], settings: Preprocessing, cache_dir: Path, name: str = "volumes") -> tuple[Path, Path]:
    """(data, metadata) of the cache; ``name`` says whose it is (covfuse.data.cache.source_key), the
    key which files and settings it holds."""
    stem = f"{name}-{settings.size}-{settings.geometry}-{settings.intensity}-{_key(files, settings)}"
    return cache_dir / f"{stem}.f16", cache_dir / f"{stem}.json"


def open_volume_cache(files: Sequence[Path], settings: Preprocessing, cache_dir: Path,
                      name: str = "volumes") -> VolumeCache | None:
    """The cache for exactly these files and settings, or None (the files are read instead)."""
    data, meta = cache_paths(files, settings, cache_dir, name)
    if not meta.is_file() or not data.is_file():
        return None
    info = json.loads(meta.read_text())
    expected = len(files) * settings.size ** 3 * 2
    if info.get("format") != FORMAT or data.stat().st_size != expected:
        log.warning("ignoring volume cache %s: size or format does not match", data)
        return None
    log.info("using volume cache at %s", data)
    return VolumeCache(data, info)


def build_volume_cache(files: Sequence[Path], settings: Preprocessing, cache_dir: Path, *, progress: bool = True,
                       name: str = "volumes") -> VolumeCache:
    """Preprocess every file once into the float16 memmap (written to ``.partial``, renamed when complete)."""
    from tqdm import tqdm

    from filelock import FileLock

    existing = open_volume_cache(files, settings, cache_dir, name)
    if existing is not None:
        return existing
    from covfuse.data.cache import remove_if_alone

    data, meta = cache_paths(files, settings, cache_dir, name)
    made_folder = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Two processes (two runs of a study, two SLURM tasks) may want the same cache at once: one
    # builds it, the other waits for the lock and then finds it built.
    lock = data.with_suffix(".lock")
    try:
        with FileLock(str(lock)):
            existing = open_volume_cache(files, settings, cache_dir, name)
            if existing is not None:
                return existing
            return _build_volume_cache(files, settings, data, meta, progress)
    except UserError:
        if made_folder:  # a failed first build leaves no folder behind
            remove_if_alone(lock)
        elif not data.exists():
            lock.unlink(missing_ok=True)  # nothing of this source to guard in a shared folder
        raise


def _build_volume_cache(files: Sequence[Path], settings: Preprocessing, data: Path, meta: Path,
                        progress: bool) -> VolumeCache:
    from tqdm import tqdm

    partial = data.with_suffix(".f16.partial")
    shape = (len(files), 1, *(settings.size,) * 3)
    array = np.memmap(partial, dtype=np.float16, mode="w+", shape=shape)
    pipeline = transform(settings)
    nonfinite = {}  # row -> NaN/Inf voxels set to 0, so a later run's data.nonfinite applies without the files
    try:
        for i, f in enumerate(tqdm(files, desc="caching volumes", unit="vol", disable=not progress, mininterval=2)):
            array[i] = load_volume(Path(f), settings, pipeline).numpy().astype(np.float16)
            if count := nonfinite_voxels(Path(f)):
                nonfinite[str(i)] = count
        array.flush()
        del array
        os.replace(partial, data)
    finally:
        if partial.exists():
            partial.unlink()
    info = {"format": FORMAT, "version": VERSION, "dtype": "float16", "shape": list(shape),
            "preprocessing": asdict(settings), "files": [str(f) for f in files], "decoder": _reader(), "nonfinite": nonfinite}
    from covfuse.io import atomic_write_text

    atomic_write_text(meta, json.dumps(info, indent=1) + "\n")
    return VolumeCache(data, info)


def _reader() -> str:
    """What read the volumes, for the cache's record: nibabel through MONAI's LoadImage."""
    from importlib.metadata import version

    return f"nibabel {version('nibabel')} (MONAI {version('monai')} LoadImage)"


# --------------------------------------------------------------------------------- dataset
def augmentation():
    """Light training augmentation (MONAI): left-right flip and a small random affine."""
    from monai import transforms as T

    return T.Compose([
        T.RandFlip(prob=0.5, spatial_axis=0),
        T.RandAffine(prob=0.5, rotate_range=(0.05,) * 3, translate_range=(2,) * 3, scale_range=(0.05,) * 3,
                     padding_mode="zeros"),
    ])


class VolumeDataset(Dataset):
    """Rows of a manifest as samples ``{"image": float16 (1, S, S, S), "covariates", "target", "index"}``.

    ``index`` is the manifest row. With ``cache`` (built from all manifest files, in order) the
    volume comes from the memmap; otherwise it is read and preprocessed from the file.
    """

    def __init__(self, files: Sequence[Path], rows: np.ndarray, covariates: np.ndarray, targets: np.ndarray,
                 settings: Preprocessing, *, train: bool = False, cache: VolumeCache | None = None):
        self.files, self.rows = list(files), np.asarray(rows, dtype=np.int64)
        self.covariates = torch.from_numpy(np.ascontiguousarray(covariates, dtype=np.float32))
        # (N, 2) survival [time, event] stays float64: float32 would tie 1000.00001 and 1000.00002
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float64 if np.ndim(targets) == 2 else np.float32))
        self.settings, self.train, self.cache = settings, train, cache
        self._pipeline = None
        self._augment = augmentation() if train else None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        source = f"cache {self.cache.path}" if self.cache is not None else "NIfTI files"
        return f"VolumeDataset({len(self)} volumes, size {self.settings.size}, train={self.train}, from {source})"

    def volume(self, row: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[row]
        if self._pipeline is None:
            self._pipeline = transform(self.settings)
        return load_volume(self.files[row], self.settings, self._pipeline).half()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        x = self.volume(row)
        if self._augment is not None:
            # torch's RNG is seeded per DataLoader worker; MONAI's own RNG is not, so seed it from torch.
            self._augment.set_random_state(int(torch.randint(0, 2**31 - 1, ())))
            x = torch.as_tensor(self._augment(x.float()), dtype=torch.float32).half()
        return {"image": x, "covariates": self.covariates[row], "target": self.targets[row], "index": torch.tensor(row)}
