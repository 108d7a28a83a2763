"""The CelebA dataset: uint8 images (from JPEGs or the memmap cache), covariates and a target by name."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from covfuse.data.celeba import CelebAMeta
from covfuse.data.transforms import DEFAULT_PRESET, check_preset, check_size, hflip, load_image
from covfuse.errors import UserError


class CelebADataset(Dataset):
    """Rows ``indices`` of ``meta`` as samples ``{"image", "covariates", "target", "index"}``.

    ``image`` is uint8 (3, S, S) (normalise on the device with
    :func:`covfuse.data.transforms.normalize`), ``covariates`` float32 (K,), ``target`` float32 (),
    ``index`` int64 () — the row in ``meta`` (file name: ``meta.filenames[index]``). With
    ``train=True`` each image is mirrored left-right with probability 1/2 (torch's RNG, which
    DataLoader seeds per worker). With ``cache`` (an :class:`~covfuse.data.cache.ImageCache` of
    the same size and preset) images come from the memmap instead of the JPEGs.

    ``__getitems__`` serves a whole batch with one memmap read when cached; DataLoader uses it
    automatically.
    """

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
        self.image_size = check_size(image_size)
        self.preset = check_preset(preset)
        self.train = bool(train)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (len(idx) and not np.issubdtype(idx.dtype, np.integer)):
            raise UserError(f"indices must be a 1-D sequence of row numbers, got shape {idx.shape} dtype {idx.dtype}")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(meta)):
            raise UserError(f"indices must lie in 0..{len(meta) - 1}, got {idx.min()}..{idx.max()}")
        self.indices = idx.astype(np.int64)
        y, c, selection = meta.select(target, covariates)
        self.target_name, self.covariate_names = selection.target, list(selection.covariates)
        self._targets = torch.from_numpy(y[self.indices])
        self._covariates = torch.from_numpy(c[self.indices])
        self._rows = torch.from_numpy(self.indices)
        if cache is not None and (cache.size != self.image_size or cache.preset != self.preset or len(cache) != len(meta)):
            raise UserError(
                f"image cache {cache.path} holds {len(cache)} images at {cache.size} px ({cache.preset}); "
                f"this dataset needs {len(meta)} at {self.image_size} px ({self.preset})"
            )
        self.cache = cache

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        source = f"cache {self.cache.path}" if self.cache is not None else f"JPEGs in {self.meta.image_dir}"
        return (
            f"CelebADataset({len(self)} images, target={self.target_name!r}, covariates={self.covariate_names}, "
            f"size={self.image_size}, preset={self.preset!r}, train={self.train}, from {source})"
        )

    def _sample(self, i: int, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": image, "covariates": self._covariates[i], "target": self._targets[i], "index": self._rows[i]}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        row = int(self.indices[i])
        if self.cache is not None:
            image = self.cache[row]
        else:
            image = load_image(self.meta.image_dir / self.meta.filenames[row], self.image_size, self.preset)
        if self.train and torch.rand(()) < 0.5:
            image = hflip(image)
        return self._sample(i, image)

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of samples; from the cache this is one sorted memmap read instead of B."""
        if self.cache is None:
            return [self[i] for i in items]
        pos = np.asarray(items, dtype=np.int64)
        flip = (torch.rand(len(pos)) < 0.5).numpy() if self.train else None
        images = self.cache.get_batch(self.indices[pos], flip=flip)
        return [self._sample(int(p), images[j]) for j, p in enumerate(pos)]
