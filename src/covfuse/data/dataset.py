"""Datasets: samples ``{"image", "covariates", "target", "index"}`` from a table's files or its memmap cache.

:class:`ImageDataset` (and :class:`CelebADataset`) for 2D images, uint8/uint16 as the files hold them,
served a whole batch at a time; :class:`VolumeDataset` for volumes (NIfTI, MGH, DICOM ...), float16, one sample at a time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from covfuse.data.cache import VolumeCache
from covfuse.data.decode import DEFAULT_PRESET, check_preset, check_size, decode_image
from covfuse.data.decoders.volume import Preprocessing, load_volume, transform
from covfuse.data.readers.celeba_release import CelebAMeta
from covfuse.data.transforms import hflip
from covfuse.errors import UserError


class SampleBatch(Sequence):
    """A batch of samples stored as batched tensors (``{"image": (B, C, S, S), ...}``).

    Indexing gives sample dicts (views), so it is a drop-in list of samples; :func:`collate`
    returns ``tensors`` as they are instead of stacking B dicts again (a second copy of every image).
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        return {k: v[j] for k, v in self.tensors.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self[j] for j in range(len(self)))


def collate(samples: Any) -> Any:
    """DataLoader ``collate_fn``: a :class:`SampleBatch` is already a batch; anything else goes to
    torch's ``default_collate``."""
    if isinstance(samples, SampleBatch):
        return samples.tensors
    return default_collate(samples)


def collate_grouped(samples: Any) -> Any:
    """:func:`collate`, then the samples reordered so equal covariate rows are adjacent (in
    ``torch.unique``'s order). For training batches, where order within a batch does not matter:
    hybrid convs with the `pattern` back-end then split the batch into views instead of copying
    each pattern's rows at every layer (less time and activation memory; docs/performance.md).
    Every tensor is reordered together, so each sample keeps its image, target and ``index``."""
    batch = collate(samples)
    covariates = batch.get("covariates") if isinstance(batch, dict) else None
    if covariates is None or covariates.dim() != 2 or covariates.shape[0] < 2:
        return batch
    inverse = torch.unique(covariates, dim=0, return_inverse=True)[1]
    if bool((inverse[1:] >= inverse[:-1]).all()):
        return batch
    order = torch.argsort(inverse, stable=True)
    return {k: v[order] if isinstance(v, torch.Tensor) and v.shape[:1] == covariates.shape[:1] else v
            for k, v in batch.items()}


class ImageDataset(Dataset):
    """Rows ``indices`` of a list of 2D image ``files`` as samples ``{"image", "covariates", "target", "index"}``.

    ``image`` is uint8 or uint16 (C, S, S) as the files hold them (normalise on the device with
    :func:`covfuse.data.transforms.normalize`), ``covariates`` float32 (K,), ``target`` float32 () (a
    survival head's float64 (2,) ``[time, event]``), ``index`` int64 () — the row in ``files``. ``targets`` (N,) and ``covariates`` (N, K) are indexed
    by row. With ``train=True`` each image is mirrored left-right with probability 1/2 (torch's RNG,
    which DataLoader seeds per worker). With ``cache`` (an :class:`~covfuse.data.cache.ImageCache` of
    the same size and preset, row i = ``files[i]``) images come from the memmap instead of the files.
    ``decode(path, size, preset)`` turns a file into an array (default: :func:`decode_image`, RGB uint8).

    ``__getitems__`` serves a whole batch with one memmap read when cached; DataLoader uses it
    automatically.
    """

    def __init__(self, files: Sequence, indices: Sequence[int] | np.ndarray, targets: np.ndarray, covariates: np.ndarray,
                 image_size: int = 64, preset: str = DEFAULT_PRESET, train: bool = False, cache=None, decode=None):
        self.files = files
        self.image_size = check_size(image_size)
        self.preset = check_preset(preset)
        self.train = bool(train)
        self.decode = decode or decode_image
        idx = np.asarray(indices)
        if idx.ndim != 1 or (len(idx) and not np.issubdtype(idx.dtype, np.integer)):
            raise UserError(f"indices must be a 1-D sequence of row numbers, got shape {idx.shape} dtype {idx.dtype}")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(files)):
            raise UserError(f"indices must lie in 0..{len(files) - 1}, got {idx.min()}..{idx.max()}")
        self.indices = idx.astype(np.int64)
        kind = np.float64 if np.ndim(targets) == 2 else np.float32  # survival [time, event]: times stay float64
        self._targets = torch.from_numpy(np.ascontiguousarray(np.asarray(targets, dtype=kind)[self.indices]))
        self._covariates = torch.from_numpy(np.ascontiguousarray(
            np.asarray(covariates, dtype=np.float32).reshape(len(files), -1)[self.indices]))
        self._rows = torch.from_numpy(self.indices)
        if cache is not None and (cache.size != self.image_size or cache.preset != self.preset or len(cache) != len(files)):
            raise UserError(
                f"image cache {cache.path} holds {len(cache)} images at {cache.size} px ({cache.preset}); "
                f"this dataset needs {len(files)} at {self.image_size} px ({self.preset})"
            )
        self.cache = cache

    def __len__(self) -> int:
        return len(self.indices)

    def _source(self) -> str:
        return f"cache {self.cache.path}" if self.cache is not None else "image files"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, size={self.image_size}, preset={self.preset!r}, "
                f"train={self.train}, from {self._source()})")

    def _sample(self, i: int, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": image, "covariates": self._covariates[i], "target": self._targets[i], "index": self._rows[i]}

    def _load(self, row: int) -> np.ndarray:
        return self.decode(self.files[row], self.image_size, self.preset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        row = int(self.indices[i])
        # a decoder may hand back a read-only view (a DICOM's pixel array): copied only then, so torch never warns
        image = self.cache[row] if self.cache is not None else torch.from_numpy(np.require(self._load(row), requirements="W"))
        if self.train and torch.rand(()) < 0.5:
            image = hflip(image)
        return self._sample(i, image)

    def __getitems__(self, items: list[int]) -> SampleBatch:
        """A batch of samples as batched tensors (use :func:`collate` as the DataLoader's ``collate_fn``).

        From the cache this is one sorted memmap read instead of B; from files each image is
        decoded straight into its row of the batch.
        """
        pos = np.asarray(items, dtype=np.int64)
        if len(pos) and (pos.min() < -len(self) or pos.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} images")
        pos = pos % max(len(self), 1)
        flip = (torch.rand(len(pos)) < 0.5).numpy() if self.train else None
        if self.cache is not None:
            images = self.cache.get_batch(self.indices[pos], flip=flip)
        else:
            out = None
            for j, row in enumerate(self.indices[pos].tolist()):
                image = self._load(row)
                if out is None:
                    out = np.empty((len(pos), *image.shape), dtype=image.dtype)
                out[j] = image[:, :, ::-1] if flip is not None and flip[j] else image
            images = torch.from_numpy(out if out is not None else np.empty((0, 3, self.image_size, self.image_size), np.uint8))
        t = torch.from_numpy(pos)
        return SampleBatch({"image": images, "covariates": self._covariates[t], "target": self._targets[t],
                            "index": self._rows[t]})


class CelebADataset(ImageDataset):
    """The rows ``indices`` of a CelebA folder with a target and covariate attributes by name (values 0/1):
    :class:`ImageDataset` over ``meta``'s JPEGs, or its memmap cache."""

    def __init__(
        self,
        meta: CelebAMeta,
        indices: Sequence[int] | np.ndarray,
        target: str,
        covariates: Sequence[str] | str = (),
        image_size: int = 64,
        preset: str = DEFAULT_PRESET,
        train: bool = False,
        cache=None,
    ):
        self.meta = meta
        y, c, selection = meta.select(target, covariates)
        self.target_name, self.covariate_names = selection.target, list(selection.covariates)
        files = _CelebAFiles(meta)
        super().__init__(files, indices, y, c, image_size, preset, train, cache)

    def _source(self) -> str:
        return f"cache {self.cache.path}" if self.cache is not None else f"JPEGs in {self.meta.image_dir}"

    def __repr__(self) -> str:
        return (
            f"CelebADataset({len(self)} images, target={self.target_name!r}, covariates={self.covariate_names}, "
            f"size={self.image_size}, preset={self.preset!r}, train={self.train}, from {self._source()})"
        )


class _CelebAFiles(Sequence):
    """``meta``'s image paths, made on demand (200k Path objects would cost ~100 MB)."""

    def __init__(self, meta: CelebAMeta):
        self.meta = meta

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i):  # type: ignore[override]
        return self.meta.image_dir / self.meta.filenames[i]


def volume_augmentation():
    """Light training augmentation of volumes (MONAI): left-right flip and a small random affine."""
    from monai import transforms as T

    return T.Compose([
        T.RandFlip(prob=0.5, spatial_axis=0),
        T.RandAffine(prob=0.5, rotate_range=(0.05,) * 3, translate_range=(2,) * 3, scale_range=(0.05,) * 3,
                     padding_mode="zeros"),
    ])


class VolumeDataset(Dataset):
    """Rows of a volume table as samples ``{"image": float16 (1, S, S, S), "covariates", "target", "index"}``.

    ``index`` is the table row. With ``cache`` (built from all the table's files, in order) the
    volume comes from the memmap; otherwise it is read and preprocessed from the file.
    """

    def __init__(self, files: Sequence[Path], rows: np.ndarray, covariates: np.ndarray, targets: np.ndarray,
                 settings: Preprocessing, *, train: bool = False, cache: VolumeCache | None = None):
        self.files, self.rows = list(files), np.asarray(rows, dtype=np.int64)
        self.covariates = torch.from_numpy(np.ascontiguousarray(covariates, dtype=np.float32))
        # (N, 2) survival [time, event] stays float64: float32 would tie 1000.00001 and 1000.00002
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float64 if np.ndim(targets) == 2 else np.float32))
        self.settings, self.train, self.cache = settings, train, cache
        self._pipeline = None
        self._augment = volume_augmentation() if train else None

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        source = f"cache {self.cache.path}" if self.cache is not None else "volume files"
        return f"VolumeDataset({len(self)} volumes, size {self.settings.size}, train={self.train}, from {source})"

    def volume(self, row: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[row]
        if self._pipeline is None:
            self._pipeline = transform(self.settings)
        return load_volume(self.files[row], self.settings, self._pipeline).half()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        x = self.volume(row)
        if self._augment is not None:
            # torch's RNG is seeded per DataLoader worker; MONAI's own RNG is not, so seed it from torch.
            self._augment.set_random_state(int(torch.randint(0, 2**31 - 1, ())))
            x = torch.as_tensor(self._augment(x.float()), dtype=torch.float32).half()
        return {"image": x, "covariates": self.covariates[row], "target": self.targets[row], "index": torch.tensor(row)}
