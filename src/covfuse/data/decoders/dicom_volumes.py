"""DICOM volumes through pydicom: a folder holding one series of 2D slices, or one enhanced multi-frame file
whose frames carry positions of their own (PerFrameFunctionalGroupsSequence -> PlanePositionSequence).

pydicom reads every header and every pixel. The rest is written here by hand because no library covfuse
has does it: MONAI's PydicomReader stacks a folder in InstanceNumber order and checks neither series,
gaps nor orientation; nibabel.nicom reads one file at a time (its series sorting prints to stdout, its
multi-frame wrapper needs Enhanced MR's DimensionIndexSequence); dicom2nifti and SimpleITK would be new
dependencies. What is done, for slices of a folder and frames of a file alike (:func:`geometry`):

- one series per folder: several (a localizer beside the T1, sequences exported together) are listed in
  one line with the option that picks one, data.series (a SeriesInstanceUID or a SeriesDescription);
- every slice has the first one's size, pixel spacing and orientation (ImageOrientationPatient equal
  within rtol = atol = 0.001, dicom2nifti's tolerance): mixed orientations are refused;
- slices are ordered by their position along the slice normal, ImagePositionPatient . (row cosine x
  column cosine), as nibabel's DICOM orientation notes and dicom2nifti do; two slices at one position
  (a time series, several echoes) are refused, and so are uneven steps (each step within rtol 0.05,
  atol 0.1 mm of the median step, dicom2nifti's slice-increment tolerance): a missing slice is never
  closed up;
- the slices step along the normal (within 0.05, dicom2nifti's orthogonality check): the sheared
  volume of a tilted gantry is refused.

The affine (voxel -> RAS mm): column 0 the row cosine x the column spacing (x is the column index),
column 1 the column cosine x the row spacing (y the row index), column 2 the mean step between slices,
column 3 the first slice's position; DICOM's patient space is LPS, so the first two rows change sign
(nibabel's and dicom2nifti's LPS -> RAS). Voxels are the stored values through the modality transform
(RescaleSlope/Intercept, or a Modality LUT: Hounsfield units for CT), float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covfuse.data.decoders.base import UnreadableVolume, VolumeReader, VolumeSource
from covfuse.data.decoders.dicom import _pixel_array

SUFFIXES = (".dcm", ".dicom", ".ima")  # files without the DICM marker still read as DICOM by these names
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HOW = "covfuse places each slice by its ImagePositionPatient, ImageOrientationPatient and PixelSpacing"


@dataclass
class Frame:
    """One 2D slice: a single-frame file (``number`` None) or frame ``number`` of a multi-frame file."""

    file: Path
    number: int | None
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row cosine, column cosine
    spacing: np.ndarray  # PixelSpacing: (between rows, between columns) mm
    shape: tuple[int, int]  # (Rows, Columns)
    scale: tuple[float, float] | None  # a multi-frame file's (slope, intercept) for this frame


def is_dicom_file(path: Path, head: bytes) -> bool:
    """DICOM Part 10's ``DICM`` marker at byte 128, or a DICOM file name without it."""
    return head[128:132] == b"DICM" or path.name.lower().endswith(SUFFIXES)


def read_header(path: Path):
    """The dataset up to its pixel data (pydicom); an unreadable file is one line naming it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    with open(path, "rb") as f:
        marked = f.read(132)[128:132] == b"DICM"
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=not marked)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError) as exc:
        raise UnreadableVolume(path, f"not a readable DICOM file ({' '.join(str(exc).split())[:120]})") from None


def holds_volume(path: Path) -> bool:
    """Whether a DICOM file is a multi-frame volume (several frames with per-frame functional groups), not
    a 2D image: how a manifest of DICOM files only tells a volume table from an image table."""
    try:
        ds = read_header(path)
    except UnreadableVolume:
        return False  # the 2D decoder names what is wrong with it
    return int(ds.get("NumberOfFrames", 1) or 1) > 1 and bool(ds.get("PerFrameFunctionalGroupsSequence"))


def _item(sequence_owner, sequence: str, attribute: str):
    """``owner.<sequence>[0].<attribute>`` or None."""
    if sequence_owner is None:
        return None
    items = sequence_owner.get(sequence)
    return items[0].get(attribute) if items else None


def _floats(value, n: int, path: Path, name: str) -> np.ndarray:
    if value is None:
        raise UnreadableVolume(path, f"no {name}; {HOW}")
    values = np.asarray([float(v) for v in value], dtype=np.float64)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise UnreadableVolume(path, f"{name} is {list(value)}, not {n} numbers; {HOW}")
    return values


def frames_of(path: Path, ds) -> list[Frame]:
    """The slices a DICOM file holds: itself (a classic single-frame file) or each frame of an enhanced
    multi-frame file, with the geometry of its functional groups (per frame, else shared)."""
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnreadableVolume(path, f"colour pixels ({ds.get('PhotometricInterpretation', '?')}); a volume is grey")
    if "Rows" not in ds or "Columns" not in ds:
        raise UnreadableVolume(path, "no Rows/Columns: not a DICOM image")
    shape = (int(ds.Rows), int(ds.Columns))
    count = int(ds.get("NumberOfFrames", 1) or 1)
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if not groups:
        if count > 1:
            raise UnreadableVolume(path, f"a multi-frame DICOM ({count} frames) without per-frame functional groups "
                                         "(PerFrameFunctionalGroupsSequence), so its frames have no positions; "
                                         "convert it to NIfTI (e.g. dcm2niix)")
        return [Frame(path, None, _floats(ds.get("ImagePositionPatient"), 3, path, "ImagePositionPatient"),
                      _floats(ds.get("ImageOrientationPatient"), 6, path, "ImageOrientationPatient"),
                      _floats(ds.get("PixelSpacing"), 2, path, "PixelSpacing"), shape, None)]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    frames = []
    for i, group in enumerate(groups):
        position = _item(group, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise UnreadableVolume(path, f"frame {i + 1} of {count} carries no position of its own "
                                         "(PerFrameFunctionalGroupsSequence -> PlanePositionSequence), so the frames "
                                         "cannot be placed as a volume; convert it to NIfTI (e.g. dcm2niix)")
        where = f"frame {i + 1}'s"

        def find(sequence: str, attribute: str):
            value = _item(group, sequence, attribute)
            return value if value is not None else _item(shared, sequence, attribute)

        slope, intercept = find("PixelValueTransformationSequence", "RescaleSlope"), \
            find("PixelValueTransformationSequence", "RescaleIntercept")
        slope = slope if slope is not None else ds.get("RescaleSlope", 1)
        intercept = intercept if intercept is not None else ds.get("RescaleIntercept", 0)
        frames.append(Frame(path, i, _floats(position, 3, path, f"{where} ImagePositionPatient"),
                            _floats(find("PlaneOrientationSequence", "ImageOrientationPatient"), 6, path,
                                    f"{where} ImageOrientationPatient"),
                            _floats(find("PixelMeasuresSequence", "PixelSpacing"), 2, path, f"{where} PixelSpacing"),
                            shape, (float(slope), float(intercept))))
    return frames


def geometry(frames: list[Frame], where: Path) -> tuple[list[Frame], np.ndarray]:
    """The frames in slice order and the volume's RAS affine, or one line saying why they are not one
    volume (the module docstring lists the checks)."""
    if len(frames) < 2:
        raise UnreadableVolume(where, f"one slice ({frames[0].file.name}) is a 2D image, not a volume; a DICOM volume "
                                      "is a folder of the slices of one series, or one multi-frame file")
    first = frames[0]
    for f in frames[1:]:
        if f.shape != first.shape or not np.allclose(f.spacing, first.spacing, rtol=1e-3, atol=1e-3):
            raise UnreadableVolume(where, f"slices differ in size: {first.file.name} is {first.shape[0]}x{first.shape[1]} "
                                          f"at {first.spacing.tolist()} mm, {f.file.name} {f.shape[0]}x{f.shape[1]} at "
                                          f"{f.spacing.tolist()} mm; one volume has one slice size")
        if not np.allclose(f.orientation, first.orientation, rtol=0.001, atol=0.001):
            raise UnreadableVolume(where, f"mixed orientations: {first.file.name} has ImageOrientationPatient "
                                          f"{_short(first.orientation)}, {f.file.name} {_short(f.orientation)} (a "
                                          "localizer in the series?); keep the slices of one orientation in the folder")
    row, column = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, column)
    along = np.array([f.position @ normal for f in frames])
    order = np.argsort(along, kind="stable")
    frames = [frames[i] for i in order]
    positions = np.array([f.position for f in frames])
    steps = np.diff(positions, axis=0)
    lengths = np.diff(along[order])
    if (lengths < 1e-3).any():
        k = int(np.argmax(lengths < 1e-3))
        raise UnreadableVolume(where, f"{frames[k].file.name} and {frames[k + 1].file.name} lie at one position "
                                      f"({along[order][k]:.3f} mm along the slice normal): several volumes in one series "
                                      "(a time series, echoes)? keep one volume per folder, or convert with dcm2niix")
    median = np.median(steps, axis=0)
    uneven = [k for k, step in enumerate(steps) if not np.allclose(step, median, rtol=0.05, atol=0.1)]
    if uneven:
        k = int(np.argmax(lengths))  # a missing slice leaves the longest step
        raise UnreadableVolume(where, f"uneven slice spacing: {lengths[k]:.3f} mm from {frames[k].file.name} to "
                                      f"{frames[k + 1].file.name}, {lengths.min():.3f} mm between other neighbours (a "
                                      "missing slice?); a volume needs evenly spaced slices: export the whole series again")
    mean = (positions[-1] - positions[0]) / (len(frames) - 1)
    direction = mean / np.linalg.norm(mean)
    if not np.allclose(direction, normal / np.linalg.norm(normal), rtol=0.05, atol=0.05):
        tilt = np.degrees(np.arccos(np.clip(abs(direction @ normal) / np.linalg.norm(normal), -1, 1)))
        raise UnreadableVolume(where, f"the slices step {tilt:.1f} degrees off their normal (a tilted gantry); covfuse "
                                      "does not resample sheared volumes: convert with dcm2niix, which corrects the tilt")
    lps = np.eye(4)
    lps[:3, 0] = row * first.spacing[1]
    lps[:3, 1] = column * first.spacing[0]
    lps[:3, 2] = mean
    lps[:3, 3] = positions[0]
    return frames, LPS_TO_RAS @ lps


def _short(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


class DicomSource(VolumeSource):
    """A DICOM volume opened from its headers; :meth:`voxels` decodes the pixels (pydicom)."""

    def __init__(self, frames: list[Frame], where: Path, floating: bool):
        self.format = "DICOM series" if where.is_dir() else "DICOM multi-frame"
        self.frames, self.affine = geometry(frames, where)
        rows, columns = self.frames[0].shape
        self.shape = (columns, rows, len(self.frames))
        self.files = sorted({f.file for f in self.frames})
        self.floating = floating

    def voxels(self, index: int | None = None) -> np.ndarray:
        import pydicom
        from pydicom.pixels import apply_modality_lut

        out = np.empty((len(self.frames), *self.frames[0].shape), dtype=np.float32)
        decoded: dict[Path, np.ndarray] = {}
        for k, frame in enumerate(self.frames):
            if frame.file not in decoded:
                ds = pydicom.dcmread(frame.file, force=True)
                pixels = _pixel_array(frame.file, ds)
                decoded = {frame.file: pixels if frame.number is not None else apply_modality_lut(pixels, ds)}
            pixels = decoded[frame.file]
            if frame.number is None:
                out[k] = pixels
            else:
                slope, intercept = frame.scale or (1.0, 0.0)
                plane = pixels[frame.number] if pixels.ndim == 3 else pixels
                out[k] = plane.astype(np.float64) * slope + intercept
        return out.transpose(2, 1, 0)  # (slice, row, column) -> (x = column, y = row, z = slice)


class DicomVolumes(VolumeReader):
    """A folder of DICOM slices (one series, or the one picked by data.series), or one multi-frame DICOM file."""

    name = "pydicom"
    kind = "DICOM"

    def accepts(self, path: Path, head: bytes) -> bool:
        return not head or is_dicom_file(path, head)

    def open(self, path: Path, series: str | None = None) -> VolumeSource:
        if not path.is_dir():
            ds = read_header(path)
            return DicomSource(frames_of(path, ds), path, _floating(ds))
        headers = _images_in(path)
        chosen = _one_series(path, headers, series)
        frames = [frame for file, ds in chosen for frame in frames_of(file, ds)]
        return DicomSource(frames, path, any(_floating(ds) for _, ds in chosen))


def _floating(ds) -> bool:
    """Float pixel data (the Float Pixel Data modules: 32 or 64 bits allocated, and no BitsStored, which
    integer pixels must have); read from the header, before the pixel data."""
    return int(ds.get("BitsAllocated", 16) or 16) in (32, 64) and "BitsStored" not in ds


def _images_in(folder: Path) -> list[tuple[Path, object]]:
    """(file, header) of every DICOM image directly in ``folder``; other files (DICOMDIR, notes, sidecars,
    reports without pixels) are passed over. None at all is one line saying what the folder holds."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    found = []
    for file in files:
        with open(file, "rb") as f:
            head = f.read(132)
        if not is_dicom_file(file, head) or file.name.upper() == "DICOMDIR":
            continue
        ds = read_header(file)
        if "Rows" in ds:
            found.append((file, ds))
    if found:
        return found
    folders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    inside = (f"its subfolders ({', '.join(folders[:3])}{', ...' if len(folders) > 3 else ''}) may each hold a series: "
              "name one series folder per row") if folders else "a row names a folder of the DICOM slices of one series"
    raise UnreadableVolume(folder, f"a folder without DICOM images ({len(files)} file(s), none a DICOM image); {inside}")


def _describe(uid: str, items: list) -> str:
    description = str(items[0][1].get("SeriesDescription", "") or "").strip()
    return f"{uid or '(no SeriesInstanceUID)'}" + (f" {description!r}" if description else "") + f" ({len(items)} files)"


def _one_series(folder: Path, headers: list, series: str | None) -> list:
    """The files of the folder's one series, or of the one data.series names (by SeriesInstanceUID, else
    by SeriesDescription, ignoring case)."""
    groups: dict[str, list] = {}
    for file, ds in headers:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((file, ds))
    listing = "; ".join(_describe(uid, items) for uid, items in list(groups.items())[:4]) + \
        (f"; and {len(groups) - 4} more" if len(groups) > 4 else "")
    if series is None:
        if len(groups) == 1:
            return next(iter(groups.values()))
        raise UnreadableVolume(folder, f"holds {len(groups)} DICOM series: {listing}; choose one with data.series "
                                       "(its SeriesInstanceUID or description; `covfuse data info --series`)")
    want = str(series).strip()
    if want in groups:
        return groups[want]
    named = [uid for uid, items in groups.items()
             if str(items[0][1].get("SeriesDescription", "") or "").strip().lower() == want.lower()]
    if len(named) == 1:
        return groups[named[0]]
    if named:
        raise UnreadableVolume(folder, f"data.series {series!r} describes {len(named)} series here ({', '.join(named)}); "
                                       "give the SeriesInstanceUID of one")
    raise UnreadableVolume(folder, f"no series here is data.series {series!r} (by SeriesInstanceUID or description); "
                                   f"it holds {listing}")
