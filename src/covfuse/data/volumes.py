"""The volume manifest's names, kept where earlier code and tests import them from.

The reader lives in :mod:`covfuse.data.readers.manifest` (one reader for 2D and 3D manifests) and
the table, encoder, targets and splits in :mod:`covfuse.data.table`.
"""
from __future__ import annotations

from covfuse.data.readers.manifest import NIFTI_SUFFIXES, REQUIRED, manifest_from_files, read_manifest  # noqa: F401
from covfuse.data.table import (  # noqa: F401
    MISSING, RESERVED, SPLIT_NAMES, CovariateEncoder, Manifest, SampleTable, check_numeric, column_kind,
    encode_target, is_missing, numeric_values, parse_number, subject_folds, subject_split,
)
