"""The LightningDataModule: CelebA-format folder -> splits -> datasets -> loaders, with the covariate controls.

``covariates_mode`` replaces what the model sees as covariates, in every split, without touching
the images or the labels: ``zeros`` / ``ones`` (constant covariates: the model cannot use them),
``shuffled`` (each split's covariate rows permuted, seeded: right marginals, no link to the image).
The real values are still what predictions.csv and the subgroup tables use.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from covfuse.data.dataset import SampleBatch, collate, collate_grouped
from covfuse.errors import UserError
from covfuse.training.config import DataConfig

SPLITS = ("train", "valid", "test")
MODES = ("real", "zeros", "ones", "shuffled")


def control_covariates(real: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """What the model is fed instead of ``real`` (n, K) covariates under ``mode``."""
    if mode == "real":
        return real
    if mode == "zeros":
        return np.zeros_like(real)
    if mode == "ones":
        return np.ones_like(real)
    if mode == "shuffled":
        return real[np.random.default_rng(seed).permutation(len(real))]
    raise UserError(f"unknown covariates_mode {mode!r}; choose from {', '.join(MODES)}")


class ControlledCovariates(Dataset):
    """A dataset whose samples' ``covariates`` are looked up, by metadata row, in ``table`` (N, K)."""

    def __init__(self, dataset: Dataset, table: np.ndarray):
        self.dataset = dataset
        self.table = torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.dataset)

    def _replace(self, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sample = dict(sample)
        sample["covariates"] = self.table[int(sample["index"])]
        return sample

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self._replace(self.dataset[i])

    def __getitems__(self, items: list[int]):
        """Keep the wrapped dataset's batched read (one memmap read per batch) and its batch form."""
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(items) if getitems is not None else [self.dataset[i] for i in items]
        if isinstance(samples, SampleBatch):
            tensors = dict(samples.tensors)
            tensors["covariates"] = self.table[tensors["index"]]
            return SampleBatch(tensors)
        return [self._replace(s) for s in samples]

    def __repr__(self) -> str:
        return f"ControlledCovariates({self.dataset!r})"


class SplitLoaders:
    """Lightning's loader hooks and ``eval_dataloaders`` from one ``_loader(split, train=False)``
    (shared by the image and the volume data modules, which provide ``datasets``, ``setup``, ``cfg``,
    ``seed``, ``pin_memory``, and their collate functions)."""

    train_collate = None  # collate_fn of training / evaluation batches (None: DataLoader's default)
    eval_collate = None

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if not self.datasets:
            self.setup()
        cfg = self.cfg
        dataset = self.datasets[split]
        batch = cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size)
        collate_fn = self.train_collate if train else self.eval_collate
        if train and (self.trainer is None or self.trainer.world_size == 1):
            return self._resumable_loader(dataset, batch, collate_fn)
        return DataLoader(
            dataset,
            batch_size=batch,
            shuffle=train,
            # A last batch of one sample breaks BatchNorm in training; dropping it loses < 1 batch per epoch.
            drop_last=train and len(dataset) > batch,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_fn,
        )

    def _resumable_loader(self, dataset: Dataset, batch: int, collate_fn=None) -> DataLoader:
        """The training loader of one process: a seeded per-epoch order that a mid-epoch checkpoint
        can resume exactly (covfuse.training.resume), with per-batch seeded augmentation; under DDP
        Lightning's DistributedSampler orders the data instead. Uses ``seed``, ``cfg``,
        ``pin_memory`` and ``trainer`` of the data module."""
        from covfuse.training.resume import EpochSampler, ResumableLoader, SeededBatches

        sampler = EpochSampler(len(dataset), self.seed)
        sampler.trainer = self.trainer
        cfg = self.cfg
        return ResumableLoader(
            SeededBatches(dataset, self.seed) if cfg.augment else dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=len(dataset) > batch,  # a last batch of one sample breaks BatchNorm
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def eval_dataloaders(self, splits: tuple[str, ...] = ("valid", "test")) -> list[DataLoader]:
        return [self._loader(split) for split in splits]


class CovfuseDataModule(SplitLoaders, L.LightningDataModule):
    """Reads the folder once per process, splits it, and serves train/valid/test loaders."""

    # Batches come ready-made from CelebADataset.__getitems__; training batches are grouped by
    # covariate row, which spares hybrid convs a copy of their input at every layer.
    train_collate = staticmethod(collate_grouped)
    eval_collate = staticmethod(collate)

    def __init__(self, data: DataConfig | dict[str, Any], seed: int = 0, pin_memory: bool = False):
        super().__init__()
        self.cfg = data if isinstance(data, DataConfig) else DataConfig(**data)
        self.seed = seed
        self.pin_memory = pin_memory
        self.meta = None
        self.indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.covariate_names: list[str] = []
        self.target_name = self.cfg.target
        self.covariates_real: np.ndarray | None = None  # (N, K) float32, metadata order
        self.labels: np.ndarray | None = None  # (N,) float32
        self.skipped: list[str] = []  # file names left out by skip_corrupt

    # -- preparation -----------------------------------------------------------------------
    def prepare_data(self) -> None:
        """With ``cache: build``, decode every image into the uint8 memmap cache once (rank 0)."""
        if self.cfg.cache != "build":
            return
        from covfuse.data import build_cache, read_celeba

        build_cache(read_celeba(self._root()), self.cfg.image_size, self.cfg.preset)

    def _root(self) -> str:
        if not self.cfg.root:
            raise UserError("no data folder: set data.root in the config or pass --data.root DIR")
        return self.cfg.root

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        from covfuse.data import read_celeba
        from covfuse.data.dataset import CelebADataset

        cfg = self.cfg
        root = self._root()
        if cfg.covariates_mode not in MODES:
            raise UserError(f"unknown covariates_mode {cfg.covariates_mode!r}; choose from {', '.join(MODES)}")
        meta = read_celeba(root)
        labels, real, selection = meta.select(cfg.target, cfg.covariates)
        self.meta, self.labels, self.covariates_real = meta, labels, real
        self.target_name, self.covariate_names = selection.target, list(selection.covariates)
        self.indices = self._split_indices(meta)
        cache = self._cache(meta)
        if cache is None:
            self._check_images(meta)
        for offset, split in enumerate(SPLITS):
            idx = self.indices[split]
            dataset = CelebADataset(
                meta, idx, self.target_name, self.covariate_names, image_size=cfg.image_size, preset=cfg.preset,
                train=(split == "train" and cfg.augment), cache=cache,
            )
            if cfg.covariates_mode != "real":
                table = np.zeros_like(real)
                table[idx] = control_covariates(real[idx], cfg.covariates_mode, seed=self.seed * 1000 + offset)
                dataset = ControlledCovariates(dataset, table)
            self.datasets[split] = dataset

    def _split_indices(self, meta) -> dict[str, np.ndarray]:
        from covfuse.data import splits

        cfg = self.cfg
        if cfg.folds == 0:
            out = {split: np.asarray(splits.official_indices(meta, split)) for split in SPLITS}
        else:
            if cfg.folds < 2 or not 0 <= cfg.fold < cfg.folds:
                raise UserError(f"data.folds must be 0 or >= 2 and data.fold in 0..folds-1, got folds={cfg.folds}, fold={cfg.fold}")
            folds = list(splits.kfold_indices(meta, cfg.folds, cfg.split_seed, cfg.target))  # not the run seed: seeds vary training, not the samples
            train, valid = folds[cfg.fold]
            out = {"train": np.asarray(train), "valid": np.asarray(valid),
                   "test": np.asarray(splits.official_indices(meta, "test"))}
        for split, idx in out.items():
            if len(idx) == 0:
                raise UserError(f"{meta.root}: the {split} split is empty; every split needs images")
        return out

    def _check_images(self, meta) -> None:
        """Without a cache the JPEGs are decoded during training: refuse empty files now (a stat each), and with
        ``skip_corrupt`` decode every image once and leave out those that fail (named in ``skipped``)."""
        import os

        from covfuse.data.decode import CorruptImage

        rows = np.concatenate([self.indices[s] for s in SPLITS])
        paths = [str(meta.image_dir / meta.filenames[int(r)]) for r in rows]
        if self.cfg.skip_corrupt:
            from covfuse.data._workers import default_workers, run_chunks
            from covfuse.data.decode import find_unreadable

            chunks = [(paths[i : i + 256],) for i in range(0, len(paths), 256)]
            bad = {p for _, found in run_chunks(find_unreadable, chunks, default_workers(len(paths))) for p in found}
            if bad:
                keep = {s: np.array([r for r in idx if str(meta.image_dir / meta.filenames[int(r)]) not in bad],
                                    dtype=np.int64) for s, idx in self.indices.items()}
                self.skipped = sorted(os.path.basename(p) for p in bad)
                for split, idx in keep.items():
                    if len(idx) == 0:
                        raise UserError(f"{meta.image_dir}: every image of the {split} split fails to decode")
                self.indices = keep
            return
        empty = [p for p in paths if os.path.getsize(p) == 0]
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise CorruptImage(empty[0], f"empty file, 0 bytes{more}")

    def _cache(self, meta):
        if self.cfg.cache == "off":
            return None
        from covfuse.data.cache import open_cache

        return open_cache(meta, self.cfg.image_size, self.cfg.preset)

    def filenames(self, index: np.ndarray) -> list[str]:
        return [self.meta.filenames[int(i)] for i in index]

    def groups(self, index: np.ndarray) -> np.ndarray:
        """The person behind each row (CelebA identity): the unit every interval resamples."""
        return self.meta.identity[np.asarray(index, dtype=np.int64)]
