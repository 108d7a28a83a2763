"""Data as a table of samples, then everything format-blind. Read it in this order:

1. ``table.py``: the :class:`~covfuse.data.table.SampleTable` (one row per sample: file, subject,
   split, columns), covariate encoding fitted on the training split, targets, subject splits/folds;
   ``survival.py`` (time, event) and ``groups.py`` (subgroups in the table's units) build on it.
2. ``readers/``: each source becomes a table (:func:`read_table` picks the reader): ``celeba`` (the
   release; its text files in ``celeba_release``), ``manifest`` (2D images or NIfTI volumes + CSV/TSV),
   ``bids``.
3. ``decoders/``: a file into pixels or voxels, one module per format (PIL, TIFF, DICOM; ``nifti``
   for volumes), on top of ``decode.py`` (presets, crop boxes, the fast CelebA JPEG path).
4. ``cache.py``: one memmap per source and settings, for 2D images (its workers in ``chunks.py``)
   and for volumes.
5. ``dataset.py``: the image and volume datasets; ``samples.py`` picks the dataset, cache and checks
   for any table; ``transforms.py`` normalises 2D images on the device.
6. ``inspect.py``: what ``covfuse data info`` and ``covfuse data verify`` report about a source.
7. ``show.py``: what ``covfuse data show`` draws, the network's inputs read by the dataset training
   builds (or one row's decoded array).

``twins/`` holds the synthetic data with planted effects (faces, brains, survival).

This package exports what a user calls: the table and its readers. Importing it loads no torch,
so ``covfuse data info`` stays fast.
"""
from __future__ import annotations

from covfuse.data.readers import read_table
from covfuse.data.readers.bids import read_bids
from covfuse.data.readers.celeba_release import read_celeba
from covfuse.data.readers.manifest import read_manifest
from covfuse.data.table import SampleTable

__all__ = ["SampleTable", "read_bids", "read_celeba", "read_manifest", "read_table"]
