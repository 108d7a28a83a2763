"""Readers: each data source becomes a :class:`~covfuse.data.table.SampleTable`.

``read_table(root)`` picks the reader from what ``root`` is: a ``.csv``/``.tsv`` manifest (2D
images or NIfTI volumes), a BIDS dataset (a folder with ``dataset_description.json``), or a CelebA
release folder. A new source is one module here plus a line in :data:`READERS`; nothing after the
table changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from covfuse.data.table import SampleTable
from covfuse.errors import UserError


def _is_manifest(root: Path) -> bool:
    return root.suffix.lower() in (".csv", ".tsv")


def _is_bids(root: Path) -> bool:
    return root.is_dir() and (root / "dataset_description.json").is_file()


def _read_manifest(root: Path, **options) -> SampleTable:
    from covfuse.data.readers.manifest import read_manifest

    return read_manifest(root, **options)


def _read_bids(root: Path, **options) -> SampleTable:
    from covfuse.data.readers.bids import read_bids

    return read_bids(root)


def _read_celeba(root: Path, **options) -> SampleTable:
    from covfuse.data.readers.celeba import read_celeba_table

    return read_celeba_table(root, check_images=options.get("check_files", True))


#: (name, does this reader take root?, reader), tried in order; CelebA is the fallback, and its
#: error says what else data.root may be.
READERS: list[tuple[str, Callable[[Path], bool], Callable[..., SampleTable]]] = [
    ("manifest", _is_manifest, _read_manifest),
    ("bids", _is_bids, _read_bids),
    ("celeba", lambda root: True, _read_celeba),
]


def _existing(root: str | Path) -> Path:
    root = Path(check_root(root))
    if not root.exists():
        raise UserError(f"{root}: no such folder or file (data.root is a manifest CSV/TSV, a BIDS folder, or a CelebA "
                        "folder holding list_attr_celeba.txt)")
    return root


def source_format(root: str | Path) -> str:
    """The reader's name for ``root``: manifest, bids or celeba."""
    root = _existing(root)
    return next(name for name, accepts, _ in READERS if accepts(root))


def check_root(root: str | Path | None) -> str:
    """``root`` as given, or the one line saying what data.root may be when none is."""
    if not root or not str(root):
        raise UserError("no data: set data.root in the config or pass --data.root (a CelebA folder, a manifest "
                        "CSV or a BIDS folder)")
    return str(root)


def read_table(root: str | Path, **options) -> SampleTable:
    """The sample table of ``root`` (see the module docstring); any problem is one UserError line."""
    root = _existing(root)
    for name, accepts, reader in READERS:
        if accepts(root):
            return reader(root, **options)
    raise AssertionError("unreachable: celeba accepts everything")
