"""Readers: each data source becomes a :class:`~covfuse.data.table.SampleTable`.

``read_table(root)`` picks the reader from what ``root`` is: a ``.csv``/``.tsv``/``.xlsx`` manifest (2D
images or volumes), a BIDS dataset (a folder with ``dataset_description.json``), or a CelebA
release folder. A new source is one module here plus a line in :data:`READERS`; nothing after the
table changes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from covfuse.data.readers.bids import is_bids, read_bids
from covfuse.data.readers.celeba import read_celeba_table
from covfuse.data.readers.manifest import MANIFEST_SUFFIXES, UNREAD_SHEETS, read_manifest
from covfuse.data.table import SampleTable
from covfuse.errors import UserError


def _is_manifest(root: Path) -> bool:
    return root.suffix.lower() in (*MANIFEST_SUFFIXES, *UNREAD_SHEETS)  # an .xls: refused by the reader, with the fix


def _read_bids(root: Path, **options) -> SampleTable:
    return read_bids(root)


def _read_celeba(root: Path, **options) -> SampleTable:
    return read_celeba_table(root, check_images=options.get("check_files", True))


#: (name, does this reader take root?, reader), tried in order; CelebA is the fallback, and its
#: error says what else data.root may be. ``read_table``'s options go to the reader (``check_files``:
#: the manifest's files and CelebA's images must exist, default True; ``sheet``: an .xlsx manifest's
#: sheet, data.sheet).
READERS: list[tuple[str, Callable[[Path], bool], Callable[..., SampleTable]]] = [
    ("manifest", _is_manifest, read_manifest),
    ("bids", is_bids, _read_bids),
    ("celeba", lambda root: True, _read_celeba),
]


def _existing(root: str | Path) -> Path:
    root = Path(check_root(root))
    if not root.exists():
        raise UserError(f"{root}: no such folder or file (data.root is a manifest CSV/TSV/.xlsx, a BIDS folder, or a "
                        "CelebA folder holding list_attr_celeba.txt)")
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
    if options.get("sheet") is None:
        options.pop("sheet", None)
    for name, accepts, reader in READERS:
        if accepts(root):
            if "sheet" in options and name != "manifest":
                raise UserError(f"{root}: data.sheet {options['sheet']!r} picks a sheet of an .xlsx manifest; this is a "
                                f"{name} source: leave data.sheet unset")
            return reader(root, **options)
    raise AssertionError("unreachable: celeba accepts everything")
