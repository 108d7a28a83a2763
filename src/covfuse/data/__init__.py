"""Data as a table of samples, then everything format-blind. Read it in this order:

1. ``table.py``: the :class:`~covfuse.data.table.SampleTable` (one row per sample: file, subject,
   split, columns), covariate encoding fitted on the training split, targets, subject splits/folds;
   ``survival.py`` (time, event) and ``groups.py`` (subgroups in the table's units) build on it.
2. ``readers/``: each source becomes a table: ``celeba`` (the release; its text files in
   ``celeba_release``), ``manifest`` (2D images or NIfTI volumes + CSV/TSV), ``bids``.
3. ``decoders/``: a 2D file into pixels, one module per format (PIL, TIFF, DICOM), on top of
   ``decode.py`` (presets, crop boxes, the fast CelebA JPEG path); NIfTI volumes in ``volume_io.py``.
4. caches: ``cache.py`` (2D images, one memmap per source and settings; its workers in
   ``chunks.py``) and the volume cache in ``volume_io.py``.
5. the dataset: ``samples.py`` picks the dataset and cache for any table (``dataset.py`` for 2D,
   ``volume_io.py`` for volumes); ``transforms.py`` normalises on the device.

``twins/`` holds the synthetic data with planted effects (faces, brains, survival); ``splits.py``
the CelebA-only official split and k-fold helpers.

Names are re-exported lazily (PEP 562), so ``from covfuse.data import read_celeba`` and
``covfuse data info`` do not pay for importing torch (~3 s) when they do not need it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ATTR_NAMES": "readers.celeba_release", "SPLIT_NAMES": "readers.celeba_release", "CelebAMeta": "readers.celeba_release", "Selection": "readers.celeba_release",
    "find_root": "readers.celeba_release", "read_celeba": "readers.celeba_release",
    "kfold_indices": "splits", "official_indices": "splits",
    "PRESETS": "decode", "load_image": "transforms", "normalize": "transforms",
    "CelebADataset": "dataset",
    "ImageCache": "cache", "build_cache": "cache", "open_cache": "cache",
    "bayes_accuracies": "twins.faces", "generate_labels": "twins.faces", "write_synth": "twins.faces",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from covfuse.data.cache import ImageCache, build_cache, open_cache
    from covfuse.data.readers.celeba_release import ATTR_NAMES, SPLIT_NAMES, CelebAMeta, Selection, find_root, read_celeba
    from covfuse.data.dataset import CelebADataset
    from covfuse.data.splits import kfold_indices, official_indices
    from covfuse.data.twins.faces import bayes_accuracies, generate_labels, write_synth
    from covfuse.data.decode import PRESETS
    from covfuse.data.transforms import load_image, normalize


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"covfuse.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'covfuse.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
