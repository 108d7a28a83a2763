"""CelebA reader: the release's text files as a sample table (attributes as 0/1 columns, identity as subject)."""
from __future__ import annotations

import os

import numpy as np

from covfuse.data.readers.celeba_release import ATTR_FILE, REQUIRED_FILES, CelebAMeta, read_celeba
from covfuse.data.table import SampleTable


def table_from_meta(meta: CelebAMeta) -> SampleTable:
    """The table of a parsed CelebA folder: row i is ``meta.filenames[i]``, its identity the subject,
    the official partition the split, each of the 40 attributes a uint8 0/1 column."""
    n = len(meta)
    image_dir = str(meta.image_dir)
    files = [os.path.join(image_dir, f) for f in meta.filenames]
    columns = {name: meta.attrs[:, k] for k, name in enumerate(meta.attr_names)}
    return SampleTable(meta.root / ATTR_FILE, list(meta.attr_names), columns, files, meta.identity,
                       meta.split.astype(np.int8), np.arange(3, n + 3, dtype=np.int64), kind="image", format="celeba",
                       ids=list(meta.filenames), sources=tuple(meta.root / f for f in REQUIRED_FILES),
                       root_dir=meta.root, binary_only=True, extra={"meta": meta})


def read_celeba_table(root, *, check_images: bool = True) -> SampleTable:
    """The table of the CelebA folder ``root`` (:func:`read_celeba`, then :func:`table_from_meta`)."""
    return table_from_meta(read_celeba(root, check_images=check_images))
