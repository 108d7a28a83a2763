"""What the network is fed, to look at before training (``covfuse data show``).

:func:`show` draws the first rows of a source (or the rows with given ids) as the model receives
them, or writes one row's decoded array:

* a montage (``.png``): each file read by the dataset training builds
  (:func:`covfuse.data.samples.make_dataset`: the decoder with its window, orientation and layout,
  then the preset or the volume preprocessing of the given :class:`~covfuse.data.samples.Settings`),
  then :func:`covfuse.data.transforms.model_input`, the normalisation the model applies. A 2D image
  is drawn on the scale that normalisation maps 0 and the file's maximum to; a volume as its three
  orthogonal mid-slices (RAS: sagittal, coronal, axial) from its smallest to its largest value.
  Each row is labelled with its id, file, layout and column values.
* an array (``.npy``): one row's file as the decoder returns it, before any resizing, as float32:
  a 2D image (H, W) or (H, W, 3) as :func:`covfuse.data.decoders.read_pixels` reads it, a volume
  (X, Y, Z) in RAS as the volume pipeline has it just before it resamples (loaded, NaN/Inf set to 0,
  reoriented: :func:`covfuse.data.decoders.nifti.transform`'s first steps).

Nothing is written unless everything was read: the output is checked first (:func:`check_out`), and
written through a temporary name (:func:`covfuse.io.atomic_path`).
"""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from covfuse.data.decode import PRESETS
from covfuse.data.decoders import probe, read_pixels
from covfuse.data.decoders.nifti import transform
from covfuse.data.layout import image_layout, layout_name
from covfuse.data.readers import read_table
from covfuse.data.readers.manifest import MANIFEST_SUFFIXES, file_kind, manifest_from_files
from covfuse.data.samples import Settings, _volume_settings, make_dataset
from covfuse.data.table import RESERVED, SPLIT_NAMES, SampleTable
from covfuse.data.transforms import model_input
from covfuse.errors import UserError, suggest
from covfuse.io import atomic_path

OUT_SUFFIXES = (".png", ".npy")
DEFAULT_ROWS = 8
DPI = 100
COLUMNS_2D = 4  # tiles per line of a 2D montage
TILE_2D = (3.2, 4.2)  # inches: a square image, its caption below
ROW_3D = (7.2, 3.2)  # inches: three square slices side by side, the caption above
HEADER = 0.5  # inches: the line naming the source and the settings
CAPTION_LINES = 6


def montage_size(n: int, kind: str) -> tuple[int, int]:
    """(width, height) in pixels of the montage of ``n`` rows of a ``kind`` ("image" or "volume") table."""
    if kind == "volume":
        width, height = ROW_3D[0], ROW_3D[1] * n + HEADER
    else:
        columns = min(n, COLUMNS_2D)
        width, height = TILE_2D[0] * columns, TILE_2D[1] * math.ceil(n / columns) + HEADER
    return round(width * DPI), round(height * DPI)


# ------------------------------------------------------------------------------ what to show
def open_source(source: str | Path) -> SampleTable:
    """The table of a source (a manifest, a BIDS or CelebA folder), or of one image or volume file."""
    path = Path(source)
    if path.is_file() and not path.name.lower().endswith(MANIFEST_SUFFIXES) and file_kind(path.name, path):
        return manifest_from_files([path], {})
    return read_table(path)


def select_rows(table: SampleTable, rows: int | None = None, ids: Sequence[str] | None = None) -> list[int]:
    """The table rows to show: those whose id (as predictions.csv names them) is in ``ids``, in that order,
    else the first ``rows``."""
    if ids:
        known = table.row_ids(range(len(table)))
        where = {i: r for r, i in enumerate(known)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise UserError(f"--ids: no row of {table.source} has the id {missing[0]!r}{suggest(missing[0], known)}; "
                            f"ids are as predictions.csv names the rows (e.g. {known[0]})")
        return [where[i] for i in ids]
    if rows is not None and rows < 1:
        raise UserError(f"--rows must be at least 1, got {rows}")
    return list(range(min(rows or DEFAULT_ROWS, len(table))))


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """``out`` if a montage (.png) or an array (.npy) can be written there, else one line saying why."""
    out = Path(out)
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(f"--out {out}: name a .png (the montage) or a .npy (one row's decoded array), "
                        f"e.g. --out {out.with_suffix('.png').name}")
    if out.is_dir():
        raise UserError(f"--out {out}: a folder; give a file name, e.g. --out {out / 'show.png'}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it or choose another --out")
    folder = out.parent  # the nearest folder that exists, as the user spelt it
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write into {folder} (permission denied); choose another --out")
    return out


# ---------------------------------------------------------------------------------- arrays
def _native_steps(settings: Settings):
    """The volume pipeline's steps before it resamples: loading, NaN/Inf to 0, reorientation to RAS."""
    from monai import transforms as T

    pipeline = transform(_volume_settings(settings))
    steps = []
    for step in pipeline.transforms:
        if isinstance(step, (T.Spacing, T.Resize, T.ResizeWithPadOrCrop)):
            break
        steps.append(step)
    return T.Compose(steps)


def _native_volume(file, settings: Settings):
    """(voxels (X, Y, Z) float32 in RAS, the file's own axis codes, its voxel sizes along X, Y, Z in mm)."""
    import nibabel as nib

    x = _native_steps(settings)(str(file))
    original = np.asarray(x.meta.get("original_affine", x.affine))
    zooms = np.sqrt((np.asarray(x.affine)[:3, :3] ** 2).sum(axis=0))
    return np.asarray(x[0], dtype=np.float32), "".join(nib.aff2axcodes(original)), zooms


def decoded(table: SampleTable, row: int, settings: Settings | None = None) -> np.ndarray:
    """Row ``row``'s file as its decoder returns it, before resizing, as float32 (see the module docstring)."""
    file = table.files[row]
    if table.kind == "volume":
        return _native_volume(file, settings or Settings(size=64))[0]
    return read_pixels(file)[0].astype(np.float32)


def network_inputs(table: SampleTable, rows: Sequence[int], settings: Settings) -> list[np.ndarray]:
    """What the model receives for each of ``rows``: (3, S, S) for a 2D image, (S, S, S) for a volume, float32."""
    dataset = make_dataset(table, np.asarray(rows, dtype=np.int64), np.zeros((len(table), 0), np.float32),
                           np.zeros(len(table), np.float32), settings)
    out = []
    for i in range(len(rows)):
        x = model_input(torch.as_tensor(dataset[i]["image"])[None], settings.preset)[0]
        out.append(x[0].numpy() if table.kind == "volume" else x.numpy())
    return out


# --------------------------------------------------------------------------------- captions
@dataclass
class Caption:
    """The label of one row: its id, file, layout and column values."""

    id: str
    file: str
    place: str
    layout: str
    values: str

    def lines(self, width: int) -> list[str]:
        head = [self.id] + ([self.file] if self.file != self.id else []) + [self.place, self.layout]
        head = [textwrap.shorten(h, width, placeholder="…") if len(h) > width else h for h in head]
        room = max(CAPTION_LINES - len(head), 1)
        body = textwrap.wrap(self.values, width) or [""]
        if len(body) > room:
            body = body[: room - 1] + [textwrap.shorten(" ".join(body[room - 1:]), width, placeholder=" …")]
        return head + body


def _values(table: SampleTable, row: int, columns: Sequence[str] | None) -> str:
    names = [table.column(c) for c in columns] if columns else [h for h in table.header if h not in RESERVED]
    if not names:
        return "(no columns)"
    return " ".join(f"{n}={table.columns[n][row]}" for n in names)


def _image_layout(table: SampleTable, row: int, shape: tuple) -> str:
    info = probe(table.files[row])
    channels, dtype = image_layout(table)
    read_as = layout_name(channels, 16 if dtype == "uint16" else 8)
    own = layout_name(info["channels"], info["bits"])
    return (f"{info['format']} {own} {info['width']}x{info['height']}"
            + (f", read as {read_as}" if read_as != own else "") + f" -> {'x'.join(map(str, shape))}")


def _volume_layout(table: SampleTable, row: int, settings: Settings, shape: tuple) -> str:
    voxels, codes, zooms = _native_volume(table.files[row], settings)
    native = "x".join(map(str, voxels.shape))
    mm = "x".join(f"{z:.3g}" for z in zooms)
    return f"{native} {codes} {mm} mm -> RAS {'x'.join(map(str, shape))} {settings.intensity}"


def caption(table: SampleTable, row: int, settings: Settings, shape: tuple, columns: Sequence[str] | None = None,
            value_range: tuple[float, float] | None = None) -> Caption:
    """The label of ``row`` in the montage; ``shape`` is the model input's, ``value_range`` its smallest and largest value."""
    rid = table.row_ids([row])[0]
    given = str(table.columns["path"][row]) if "path" in table.columns else Path(table.files[row]).name
    place = f"subject {table.subjects[row]}"
    if 0 <= int(table.split[row]) < len(SPLIT_NAMES):
        place += f", {SPLIT_NAMES[int(table.split[row])]}"
    if value_range is not None:
        place += f"; input {value_range[0]:.3g}..{value_range[1]:.3g}"
    layout = _volume_layout(table, row, settings, shape) if table.kind == "volume" else _image_layout(table, row, shape)
    return Caption(rid, given, place, layout, _values(table, row, columns))


# --------------------------------------------------------------------------------- montage
def _display_range(preset: str) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the normalised values of 0 and of the file's maximum under ``preset`` (drawn black and white)."""
    mean, std = np.asarray(PRESETS[preset]["mean"]), np.asarray(PRESETS[preset]["std"])
    return (0 - mean) / std, (1 - mean) / std


def _header(table: SampleTable, rows: Sequence[int], settings: Settings) -> str:
    shown = f"{table.source}: {len(rows)} of {len(table)} row(s) as the network sees them"
    if table.kind == "volume":
        spacing = f", resampled to {settings.spacing:g} mm" if settings.spacing else ""
        return (f"{shown}\n{settings.size}^3 voxels ({settings.geometry}{spacing}, {settings.intensity}); mid-slices "
                "in RAS: sagittal, coronal, axial; each volume from its min (black) to its max (white)")
    lo, hi = _display_range(settings.preset)
    return (f"{shown}\n{settings.size}x{settings.size} px, preset {settings.preset}; normalised, drawn from "
            f"{lo.min():.3g} (black) to {hi.max():.3g} (white)")


def montage(table: SampleTable, rows: Sequence[int], settings: Settings, columns: Sequence[str] | None = None):
    """The matplotlib figure of ``rows`` (see the module docstring); its size is :func:`montage_size`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    inputs = network_inputs(table, rows, settings)
    width, height = montage_size(len(rows), table.kind)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.01, 1 - 0.08 / (height / DPI), _header(table, rows, settings), va="top", ha="left", fontsize=7,
             wrap=True)
    top = 1 - HEADER * DPI / height  # figure fraction below the header
    if table.kind == "volume":
        row_h = ROW_3D[1] * DPI / height
        for k, (row, x) in enumerate(zip(rows, inputs)):
            y0 = top - (k + 1) * row_h
            label = caption(table, row, settings, (1, *x.shape), columns, (float(x.min()), float(x.max())))
            fig.text(0.01, y0 + row_h - 0.02 * (ROW_3D[1] * DPI / height), "\n".join(label.lines(130)), va="top",
                     ha="left", fontsize=6.5, family="monospace")
            c = [s // 2 for s in x.shape]
            slices = ((f"sagittal x={c[0]} (A right, S up)", x[c[0], :, :]),
                      (f"coronal y={c[1]} (R right, S up)", x[:, c[1], :]),
                      (f"axial z={c[2]} (R right, A up)", x[:, :, c[2]]))
            side = 2.3 / ROW_3D[1] * row_h  # square slices below the caption
            for j, (name, plane) in enumerate(slices):
                ax = fig.add_axes((j / 3 + 0.01, y0 + 0.02 * row_h, 0.31, side))
                ax.imshow(plane.T, origin="lower", cmap="gray", vmin=float(x.min()), vmax=float(x.max()),
                          interpolation="nearest")
                ax.set_title(name, fontsize=6.5, pad=2)
                ax.set_axis_off()
    else:
        lo, hi = _display_range(settings.preset)
        ncols = min(len(rows), COLUMNS_2D)
        tile_w, tile_h = 1 / ncols, TILE_2D[1] * DPI / height
        side_h = TILE_2D[0] * 0.92 * DPI / height  # a square image of 92% of the tile's width
        for k, (row, x) in enumerate(zip(rows, inputs)):
            x0, y0 = (k % ncols) * tile_w, top - (k // ncols + 1) * tile_h
            picture = np.clip((x - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1).transpose(1, 2, 0)
            ax = fig.add_axes((x0 + 0.04 * tile_w, y0 + tile_h - side_h, 0.92 * tile_w, side_h))
            ax.imshow(picture, interpolation="nearest")
            ax.set_axis_off()
            label = caption(table, row, settings, x.shape, columns, (float(x.min()), float(x.max())))
            fig.text(x0 + 0.04 * tile_w, y0 + tile_h - side_h - 0.01, "\n".join(label.lines(52)), va="top", ha="left",
                     fontsize=6.5, family="monospace")
    return fig


# ------------------------------------------------------------------------------------ show
def show(source: str | Path, out: str | Path, settings: Settings, *, rows: int | None = None,
         ids: Sequence[str] | None = None, columns: Sequence[str] | None = None, overwrite: bool = False) -> dict:
    """``covfuse data show``: write the montage (``out`` ends in .png) or one row's decoded array (.npy) of
    ``source``; returns what was written: ``{"out", "rows", "ids", "kind", "shape"}``."""
    out = check_out(out, overwrite)
    array = out.suffix.lower() == ".npy"
    if array and rows is not None and rows != 1:
        raise UserError(f"--out {out}: a .npy holds one row's array; give --rows 1 or --ids ID (a .png shows several)")
    table = open_source(source)
    for name in columns or ():
        table.column(name)  # a misspelt name: one line with the closest column
    chosen = select_rows(table, 1 if array and rows is None else rows, ids)
    if array and len(chosen) != 1:
        raise UserError(f"--out {out}: a .npy holds one row's array, --ids names {len(chosen)}; give one id")
    if array:
        values = decoded(table, chosen[0], settings)
        out.parent.mkdir(parents=True, exist_ok=True)  # only once everything was read
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, values)
        shape = values.shape
    else:
        fig = montage(table, chosen, settings, columns)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        shape = montage_size(len(chosen), table.kind)
    return {"out": str(out), "rows": chosen, "ids": table.row_ids(chosen), "kind": table.kind, "shape": tuple(shape)}
