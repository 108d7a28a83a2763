"""The one LightningDataModule: any source's sample table -> subject splits -> encoded covariates -> loaders.

``data.root`` is read by :func:`covfuse.data.readers.read_table` (a CelebA folder, an image or
volume manifest, a BIDS dataset); from the table on, nothing here knows a file format: the target
and covariates are encoded with the table's functions (statistics from the training split only),
splits and folds keep each subject on one side and come from ``data.split_seed``'s shuffle when
the source has no split, and :mod:`covfuse.data.samples` answers for the table's kind: datasets,
caches, file checks and the loaders' collate functions. The encoder, the class list and the
preprocessing are the module's :meth:`~CovfuseDataModule.state`, written to the run folder as
``data_state.json`` and passed back by ``covfuse test``/``predict``, so evaluation never refits
them on other rows.

``covariates_mode`` replaces what the model sees as covariates, in every split, without touching
the images or the labels: ``zeros`` / ``ones`` (constant covariates: the model cannot use them),
``shuffled`` (each split's covariate rows permuted, seeded: right marginals, no link to the image).
The real values are still what predictions.csv and the subgroup tables use.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from covfuse.data import groups, readers, samples
from covfuse.data.survival import check_events, survival_labels
from covfuse.data.table import (CovariateEncoder, check_categorical, check_selection, encode_target, numeric_values,
                                subject_folds, subject_split)
from covfuse.errors import UserError
from covfuse.training.config import DataConfig
from covfuse.training.resume import EpochSampler, ResumableLoader, SeededBatches

log = logging.getLogger(__name__)

TRAIN_EVAL = "train-eval"
"""The training split scored like valid/test (no augmentation): a survival run's Breslow baseline comes from it."""

SPLITS = ("train", "valid", "test")
STATE_FILE = "data_state.json"
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


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class CovfuseDataModule(L.LightningDataModule):
    """Reads the source once per process, splits it by subject and serves train/valid/test loaders.

    Args:
        data: the data config; ``root`` is the source, ``image_size`` the side in pixels/voxels.
        seed: the run seed (the training order, augmentation and the covariate controls). Splits and
            folds do not depend on it.
        state: a previous :meth:`state` (encoder + classes) to reuse instead of fitting.
        head: the model's head: binary/two-class (two classes), multiclass (three or more),
            regression (a numeric target) or survival (a time and data.event).
    """

    def __init__(self, data: DataConfig | dict[str, Any], seed: int = 0, pin_memory: bool = False,
                 state: dict | None = None, head: str = "binary"):
        super().__init__()
        self.cfg = data if isinstance(data, DataConfig) else DataConfig(**data)
        self.seed, self.pin_memory, self.given_state, self.head = seed, pin_memory, state, head
        self.table = None
        self.meta = None  # the CelebA metadata for CelebA folders, else the table (set by setup)
        self.indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Dataset] = {}
        self.covariate_names: list[str] = []
        self.target_name = self.cfg.target
        self.classes: list[str] = []
        self.encoder = None
        self.covariates_real: np.ndarray | None = None  # (N, K) float32, table order
        self.labels: np.ndarray | None = None  # (N,) per row; survival: (N, 2) time, event
        self.skipped: list[str] = []  # files left out by skip_corrupt
        self._undecodable: set[str] | None = None  # skip_corrupt: the files found not to decode (prepare_data)
        self.nonfinite: tuple[int, int] = (0, 0)  # (files, voxels) with NaN/Inf set to 0 (data.nonfinite zero)
        self.train_collate = self.eval_collate = None  # the loaders' collate_fn, as the table's kind needs (_validate)
        self.cache = None  # the cache setup opened, if any

    # -- preparation -----------------------------------------------------------------------
    def _root(self) -> str:
        return readers.check_root(self.cfg.root)

    def settings(self) -> samples.Settings:
        return samples.settings(self.cfg)

    def read_table(self):
        return readers.read_table(self._root(), sheet=self.cfg.sheet)

    def _run_table(self):
        """The table; for a run's data (a saved state), data.root must still hold it: a root that is gone
        says how to name its new place, and data at a new place must be the data the run recorded."""
        recorded = (self.given_state or {}).get("root")
        if not recorded:
            return self.read_table()
        root = self._root()
        if not Path(root).exists():
            raise UserError(f"{root}: the run's data is not there any more; if it moved, pass --data.root NEW "
                            "(its new folder or manifest)")
        table = self.read_table()
        if os.path.abspath(root) != recorded.get("absolute"):
            if samples.fingerprint(table) != recorded.get("fingerprint"):
                raise UserError(f"{root}: other data than the run was trained on (its table's fingerprint differs "
                                f"from the one recorded for {recorded.get('absolute')}); give --data.root the place "
                                "the run's own data moved to")
        return table

    def prepare_data(self) -> None:
        """With ``cache: build``, decode every file into the memmap cache once (rank 0), but only after
        the table, target, splits and covariates validated: a bad selection costs no decoding."""
        if self.cfg.cache != "build":
            return
        self._validate()
        table, settings = self.table, self.settings()
        if self.cfg.skip_corrupt and samples.open_cache(table, settings, self.cfg.cache_dir) is None:
            # the cache holds every file, so a build would stop at the first bad one: decode each file once first
            # (setup reuses the answer); with none bad the cache is built as without skip_corrupt, silently
            if self._undecodable is None:  # once: Lightning calls prepare_data again after setup left files out
                self._undecodable = self._decode_check(table)
                if self._undecodable:
                    log.warning("data.skip_corrupt: %d file(s) do not decode, so no cache is built (it holds every "
                                "file); the others are read as training goes", len(self._undecodable))
            if self._undecodable:
                return
        self.nonfinite = samples.check_nonfinite_before_build(table, settings, self.cfg.nonfinite, self.cfg.cache_dir)
        samples.build_cache(table, settings, self.cfg.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._validate()
        cfg, table, labels, real = self.cfg, self.table, self.labels, self.covariates_real
        settings = self.settings()
        cache = None if cfg.cache == "off" else samples.open_cache(table, settings, cfg.cache_dir)
        self.cache = cache
        if cache is None:
            self._check_files(table)
        # files read as training goes, or a cache that holds them zeroed: count what data.nonfinite covers now
        rows = np.concatenate([self.indices[s] for s in SPLITS])
        self.nonfinite = samples.check_nonfinite(table, rows, cfg.nonfinite, cache, settings)
        feeds = {}
        for offset, split in enumerate(SPLITS):
            idx = self.indices[split]
            feed = real
            if cfg.covariates_mode != "real":
                feed = np.zeros_like(real)
                feed[idx] = control_covariates(real[idx], cfg.covariates_mode, seed=self.seed * 1000 + offset)
            feeds[split] = feed
            self.datasets[split] = samples.make_dataset(table, idx, feed, labels, settings,
                                                        train=(split == "train" and cfg.augment), cache=cache)
        if self.head == "survival":  # the training split without augmentation: its risks give the Breslow baseline
            self.datasets[TRAIN_EVAL] = (samples.make_dataset(table, self.indices["train"], feeds["train"], labels,
                                                              settings, train=False, cache=cache)
                                         if cfg.augment else self.datasets["train"])

    def _validate(self) -> None:
        """Read the table and check and encode everything but the files: target, splits, covariates."""
        if self.table is not None:
            return
        cfg = self.cfg
        if cfg.covariates_mode not in MODES:
            raise UserError(f"unknown covariates_mode {cfg.covariates_mode!r}; choose from {', '.join(MODES)}")
        table = self._run_table()
        if table.binary_only and self.head not in ("binary", "two-class"):
            raise UserError(f"model.head {self.head} needs a target with several classes or numbers; {table.source} "
                            "holds binary attributes only: use head binary or two-class")
        covariates = [c.strip() for c in cfg.covariates.split(",") if c.strip()] if isinstance(cfg.covariates, str) \
            else list(cfg.covariates)
        self.target_name, covariates = check_selection(table, cfg.target, covariates)
        check_categorical(covariates, cfg.categorical)
        state = self.given_state or {}
        regression = self.head == "regression"
        if self.head == "survival":  # (time, event) per row; time-to-event is not a class or a plain number
            labels, self.classes, regression = survival_labels(table, cfg.target, cfg.event), [], True
        else:
            labels, self.classes = encode_target(table, self.target_name,
                                                 "regression" if regression else "classification",
                                                 None if regression else (state.get("classes") or cfg.classes))
        where = table.source
        if self.head == "multiclass" and len(self.classes) < 3:
            raise UserError(f"{where}: target {self.target_name!r} has {len(self.classes)} classes "
                            f"{self.classes}; use model.head binary for two classes")
        if not regression and self.head != "multiclass" and len(self.classes) != 2:
            raise UserError(f"{where}: target {self.target_name!r} has {len(self.classes)} classes "
                            f"{self.classes}; the binary head needs two (set data.classes to pick them, "
                            "or use model.head multiclass)")
        if table.binary_only:
            self.classes = []  # attributes are 0/1 by definition; predictions say P(attribute)
        self.table, self.labels = table, labels
        self.train_collate, self.eval_collate = samples.collate_functions(table)
        self.meta = table.extra.get("meta", table)
        self.indices = self._split_indices(table, labels)
        if self.head == "survival":  # a split without an event has no C-index
            check_events(table, labels, self.indices)
        if "encoder" in state:
            self.encoder = CovariateEncoder.from_dict(state["encoder"])
        else:
            self.encoder = CovariateEncoder.fit(table, covariates, self.indices["train"], cfg.categorical)
        real = self.encoder.transform(table)
        self.covariates_real, self.covariate_names = real, self.encoder.feature_names

    def _decode_check(self, table) -> set[str]:
        """The files of the splits that do not decode (every file decoded once; ``skip_corrupt``)."""
        return samples.check_files(table, np.concatenate([self.indices[s] for s in SPLITS]), True)

    def _check_files(self, table) -> None:
        rows = np.concatenate([self.indices[s] for s in SPLITS])
        if self.cfg.skip_corrupt and self._undecodable is not None:  # prepare_data decoded them already
            bad = self._undecodable
        else:
            bad = samples.check_files(table, rows, self.cfg.skip_corrupt, self.settings())
        if bad:
            keep = {s: np.array([r for r in idx if str(table.files[int(r)]) not in bad], dtype=np.int64)
                    for s, idx in self.indices.items()}
            self.skipped = sorted(os.path.basename(p) for p in bad)
            for split, idx in keep.items():
                if len(idx) == 0:
                    raise UserError(f"{table.root}: every file of the {split} split fails to decode")
            self.indices = keep

    def _split_indices(self, table, labels: np.ndarray) -> dict[str, np.ndarray]:
        cfg = self.cfg
        split_seed = cfg.split_seed
        split = subject_split(table, split_seed)
        if cfg.folds == 0:
            out = {name: np.flatnonzero(split == k).astype(np.int64) for k, name in enumerate(SPLITS)}
        else:
            if cfg.folds < 2 or not 0 <= cfg.fold < cfg.folds:
                raise UserError(f"data.folds must be 0 or >= 2 and data.fold in 0..folds-1, got folds={cfg.folds}, fold={cfg.fold}")
            stratify = None if self.head == "regression" else labels  # classes, not continuous values
            if self.head == "survival":  # folds balance the events
                stratify = labels[:, 1]
            train, valid = subject_folds(table, split, cfg.folds, split_seed, stratify=stratify)[cfg.fold]
            out = {"train": train, "valid": valid, "test": np.flatnonzero(split == 2).astype(np.int64)}
        where = table.source
        for name, idx in out.items():
            if len(idx) == 0:
                raise UserError(f"{where}: the {name} split is empty; every split needs subjects")
        return out

    def covariate_groups(self, rows: np.ndarray) -> dict:
        """{covariate: its subgroups (covfuse.data.groups.Grouping)} for table ``rows``, in the table's units."""
        return groups.covariate_groups(self.encoder, self.table, rows, self.indices["train"])

    def constant_covariates(self) -> list[str]:
        """Numeric covariates with a single value in the training split (the encoder keeps SD 1 for them, not 0)."""
        out = []
        for spec in self.encoder.specs:
            if spec["kind"] == "numeric":
                values = numeric_values(self.table, self.table.column(spec["name"]))[self.indices["train"]]
                if len(np.unique(values[np.isfinite(values)])) == 1:
                    out.append(spec["name"])
        return out

    def notes(self) -> list[str]:
        """The rules that applied in reading the data, one line each (the fit log says them): see
        :func:`covfuse.data.samples.reading_notes`; merged spellings for a class target and categorical covariates."""
        columns = [s["name"] for s in self.encoder.specs if s["kind"] == "categorical"]
        if self.classes and self.head != "survival":
            columns.insert(0, self.target_name)
        return samples.reading_notes(self.table, [self.table.column(c) for c in columns], self.cache)

    def covariate_values(self, rows: np.ndarray) -> dict[str, list[str]]:
        """{covariate: its value per row as the table has it ("" where missing)}."""
        return groups.covariate_values(self.encoder, self.table, rows)

    def target_stats(self) -> dict[str, float]:
        """Mean and sd of the training split's target (regression standardises with them)."""
        y = self.labels[self.indices["train"]].astype(np.float64)
        sd = float(y.std(ddof=1)) if len(y) > 1 else 1.0
        return {"mean": float(y.mean()), "sd": sd if sd > 0 else 1.0}

    def state(self) -> dict:
        """What evaluation must reuse: the fitted covariate encoder, the class order, the preprocessing, and
        where the data was (data.root as given and absolute, the table's fingerprint)."""
        root = str(self.cfg.root)
        return {"encoder": self.encoder.to_dict(), "classes": self.classes, "target": self.target_name,
                "kind": self.table.kind, "format": self.table.format,
                "preprocessing": samples.describe(self.table, self.settings()),
                "root": {"given": root, "absolute": os.path.abspath(root), "fingerprint": samples.fingerprint(self.table)}}

    def filenames(self, index: np.ndarray) -> list[str]:
        """Each row's id in predictions.csv (the table's: a file name or the manifest's ``path``)."""
        return self.table.row_ids(index)

    def groups(self, index: np.ndarray) -> np.ndarray:
        """The person behind each row (CelebA identity, subject): the unit every interval resamples."""
        return self.table.subjects[np.asarray(index, dtype=np.int64)]

    # -- loaders ---------------------------------------------------------------------------
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
