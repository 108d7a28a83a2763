"""Volumes nibabel reads: NIfTI-1/2 (``.nii``, ``.nii.gz``), FreeSurfer MGH (``.mgz``, ``.mgh``) and Analyze
7.5 / SPM pairs (``.hdr`` + ``.img``, named by either file).

nibabel picks the format from the file itself (``nib.load``) and gives every one the same thing: the
shape, the voxel-to-RAS affine (MGH's vox2ras; Analyze's zooms in its radiological convention, or SPM's
``.mat`` beside it) and the voxels after the file's scaling (``dataobj``, read lazily, so a 4-D file
gives one volume without reading the others).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from covfuse.data.decoders.base import VolumeReader, VolumeSource

#: nibabel's image class (name prefix) -> the format's name (Spm99/Spm2 Analyze are Analyze; Nifti1Pair is
#: NIfTI-1 as a .hdr/.img pair).
FORMATS = (("Nifti1Pair", "NIfTI pair"), ("Nifti1", "NIfTI"), ("Nifti2", "NIfTI-2"), ("MGH", "MGH"),
           ("Analyze", "Analyze"), ("Spm", "Analyze"))
SUFFIXES = (".nii", ".nii.gz", ".mgz", ".mgh", ".hdr", ".img", ".hdr.gz", ".img.gz")


class NibabelSource(VolumeSource):
    def __init__(self, image):
        self.image = image
        self.format = next((label for name, label in FORMATS if type(image).__name__.startswith(name)),
                           type(image).__name__)
        self.shape = tuple(int(s) for s in image.shape)
        self.affine = np.asarray(image.affine, dtype=np.float64)
        self.files = sorted({Path(holder.filename) for holder in image.file_map.values()
                             if holder.filename and Path(holder.filename).is_file()})
        dtype = np.dtype(image.get_data_dtype())
        header = image.header
        slope, inter = header.get_slope_inter() if hasattr(header, "get_slope_inter") else (None, None)
        self.floating = dtype.kind in "fc" or any(v is not None and not np.isfinite(v) for v in (slope, inter))

    def voxels(self, index: int | None = None) -> np.ndarray:
        if index is None:
            return np.asanyarray(self.image.dataobj)
        return np.asanyarray(self.image.dataobj[..., index])


class NibabelVolumes(VolumeReader):
    """Any file that is not DICOM: nibabel decides from its header and suffix whether it reads it."""

    name = "nibabel"
    kind = "NIfTI, MGH or Analyze"

    def accepts(self, path: Path, head: bytes) -> bool:
        return bool(head)  # a file; DICOM files are claimed first (covfuse.data.decoders.volume.READERS)

    def open(self, path: Path, series: str | None = None) -> VolumeSource:
        import nibabel as nib

        return NibabelSource(nib.load(str(path)))
