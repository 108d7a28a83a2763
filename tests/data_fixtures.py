"""Helpers for the data tests: tiny synthetic twins (cached per process) and hand-written CelebA files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from covfuse.data.readers.celeba_release import ATTR_NAMES
from covfuse.data.twins.faces import write_synth

_TWINS: dict[tuple, Path] = {}


def make_twin(tmp_path_factory, n: int = 200, size: tuple[int, int] = (44, 54), seed: int = 0,
              effect: str = "planted", images: bool = True) -> Path:
    """A synthetic twin written once per process and parameter set; treat it as read-only."""
    key = (n, size, seed, effect, images)
    if key not in _TWINS:
        out = tmp_path_factory.mktemp("twin") / "data"
        write_synth(out, n=n, seed=seed, effect=effect, image_size=size, images=images, progress=False)
        _TWINS[key] = out
    return _TWINS[key]


def tiny_study_config(tmp_path_factory, max_epochs: int) -> Path:
    """A base config for sweeps and searches that train in seconds: a 96-image twin at 16 px, two covariates,
    no cache, 50 bootstrap resamples."""
    twin = make_twin(tmp_path_factory, n=96, size=(24, 28)) / "celeba"
    path = tmp_path_factory.mktemp("cfg") / "base.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": str(twin), "covariates": ["Young", "Male"], "image_size": 16,
                                             "batch_size": 16, "cache": "off"},
                                    "trainer": {"max_epochs": max_epochs, "summary": False, "progress": "none",
                                                "accelerator": "cpu"},
                                    "bootstrap": 50}))
    return path


def copy_twin(tmp_path_factory, dest: Path, **kwargs) -> Path:
    """A private, writable copy of a twin (for tests that corrupt or extend it)."""
    src = make_twin(tmp_path_factory, **kwargs)
    shutil.copytree(src, dest)
    return dest


# A small hand-written table: (file name, split, identity, set of positive attributes).
ROWS = [
    ("000001.jpg", 0, 2880, {"Attractive", "Smiling", "Young"}),
    ("000002.jpg", 0, 2937, {"Male", "Eyeglasses"}),
    ("000003.jpg", 0, 2880, {"Young", "Bangs", "5_o_Clock_Shadow"}),
    ("000004.jpg", 1, 4153, {"Male", "Young", "Wearing_Hat", "Smiling"}),
    ("000005.jpg", 1, 4153, set()),
    ("000006.jpg", 2, 10177, set(ATTR_NAMES)),
    ("000007.jpg", 2, 1, {"Attractive", "Young", "Male"}),
]


def expected_attrs(rows=ROWS) -> np.ndarray:
    return np.array([[name in pos for name in ATTR_NAMES] for _, _, _, pos in rows], dtype=np.uint8)


def write_handmade(root: Path, newline: str = "\r\n", spacing: str = "release", rows=ROWS,
                   header_space: bool = True, images: bool = True) -> Path:
    """Write the five CelebA text files (and tiny JPEGs) for ``rows`` into ``root``.

    spacing: "release" (values right-aligned in 3 characters), "single" (one space),
    "irregular" (runs of 1-4 spaces between fields) or "tabs" (spaces and tabs mixed).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def gap() -> str:
        runs = {"single": [" "], "release": [" "], "irregular": [" ", "  ", "   ", "    "], "tabs": ["\t", " \t ", "  "]}
        return str(rng.choice(runs[spacing]))

    def values(vals, width: int = 3) -> str:
        if spacing == "release":
            return "".join(f"{v:{width}d}" for v in vals)
        return "".join(gap() + str(v) for v in vals)

    def write(name: str, lines: list[str]) -> None:
        (root / name).write_bytes((newline.join(lines) + newline).encode())

    header = " ".join(ATTR_NAMES) + (" " if header_space else "")
    attrs = expected_attrs(rows).astype(int) * 2 - 1
    write("list_attr_celeba.txt", [str(len(rows)), header] + [f + values(a) for (f, *_), a in zip(rows, attrs)])
    write("list_eval_partition.txt", [f"{f}{gap()}{s}" for f, s, _, _ in rows])
    write("identity_CelebA.txt", [f"{f}{gap()}{i}" for f, _, i, _ in rows])
    write("list_bbox_celeba.txt", [str(len(rows)), "image_id x_1 y_1 width height"]
          + [f"{f}{values([95, 71, 226, 313], 5)}" for f, *_ in rows])
    write("list_landmarks_align_celeba.txt",
          [str(len(rows)), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y "]
          + [f"{f}{values([69, 109, 106, 113, 77, 142, 73, 152, 108, 154], 5)}" for f, *_ in rows])
    if images:
        (root / "img_align_celeba").mkdir(exist_ok=True)
        for k, (f, *_) in enumerate(rows):
            Image.new("RGB", (20, 24), (10 * k, 100, 200)).save(root / "img_align_celeba" / f)
    return root


# A study config small enough for the suite: one epoch of vgg-mini at 32 px (tests/studies/test_sweep*.py).
TINY_STUDY = {
    "data": {"covariates": ["Young", "Male"], "image_size": 32, "batch_size": 32, "cache": "off"},
    "model": {"backbone": "vgg-mini"},
    "trainer": {"max_epochs": 1, "summary": False, "progress": "none"},
    "bootstrap": 50,
}


# ------------------------------------------------------------------------- DICOM volumes from NIfTI
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (DICOM's patient space)
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
MR = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage


def _dicom_dataset(sop_class: str, rows: int, columns: int, uid: str, description: str):
    """A pydicom dataset with the file meta, patient/series identity and 16-bit unsigned grey pixel layout."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "p1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesDescription, ds.SeriesNumber = "1.2.3", uid, description, 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def slice_geometry(affine: np.ndarray, k: int) -> tuple[list, list, list]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of slice k of a volume whose voxel -> RAS
    affine is ``affine``, with the volume's x the DICOM column index and y the row index (what dcm2niix inverts)."""
    lps = LPS @ affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row, column = lps[:3, 0] / dc, lps[:3, 1] / dr
    position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
    return [f"{v:.6f}" for v in position], [f"{v:.6f}" for v in (*row, *column)], [f"{dr:.6f}", f"{dc:.6f}"]


def write_dicom_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, uid: str = "1.2.826.0.1.1",
                       description: str = "T1 MPRAGE", intercept: float = -1024.0, seed: int = 0) -> list[Path]:
    """Write ``data`` (X, Y, Z integers, as a NIfTI holds them with ``affine``) as one classic DICOM file per
    slice (pydicom): stored = value - intercept (RescaleIntercept), files named and numbered in shuffled order."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(data.shape[2])
    files = []
    for n, k in enumerate(order):
        ds = _dicom_dataset(MR, data.shape[1], data.shape[0], uid, description)
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = slice_geometry(affine, int(k))
        ds.InstanceNumber, ds.RescaleSlope, ds.RescaleIntercept = int(n) + 1, 1, intercept
        ds.PixelData = (data[:, :, k].T - intercept).astype("<u2").tobytes()
        files.append(folder / f"IM{seed:02d}{n:04d}")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def write_multiframe(path: Path, data: np.ndarray, affine: np.ndarray, *, slope: float = 0.5,
                     intercept: float = -1024.0, positions: bool = True, seed: int = 0) -> Path:
    """Write ``data`` (X, Y, Z) as one enhanced multi-frame MR file (pydicom): frames in shuffled order, each with
    its own PlanePositionSequence (unless ``positions`` is False: only a shared one), orientation, spacing and
    the rescale in the shared functional groups; stored = (value - intercept) / slope."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    order = np.random.default_rng(seed).permutation(data.shape[2])
    ds = _dicom_dataset(ENHANCED_MR, data.shape[1], data.shape[0], "1.2.826.0.1.9", "enhanced T1")
    ds.NumberOfFrames = len(order)
    _, orientation, spacing = slice_geometry(affine, 0)
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = orientation
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = spacing
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = slope
    shared.PixelValueTransformationSequence[0].RescaleIntercept = intercept
    shared.PixelValueTransformationSequence[0].RescaleType = "US"
    if not positions:
        shared.PlanePositionSequence = Sequence([Dataset()])
        shared.PlanePositionSequence[0].ImagePositionPatient = slice_geometry(affine, 0)[0]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        frame = Dataset()
        if positions:
            frame.PlanePositionSequence = Sequence([Dataset()])
            frame.PlanePositionSequence[0].ImagePositionPatient = slice_geometry(affine, int(k))[0]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = np.stack([(data[:, :, k].T - intercept) / slope for k in order])
    ds.PixelData = np.rint(stored).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path
