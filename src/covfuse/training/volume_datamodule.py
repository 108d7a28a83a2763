"""The LightningDataModule for volumes: manifest CSV -> subject splits -> encoded covariates -> loaders.

Same interface as :class:`covfuse.training.datamodule.CovfuseDataModule` (``indices``,
``datasets``, ``covariate_names``, ``labels``, ``covariates_real``, ``filenames``,
``eval_dataloaders``), so fit/test/sweep/cv run unchanged; :func:`make_datamodule` picks it when
``data.root`` is a ``.csv`` manifest. The covariate encoder (training-split statistics) and the
class list are the module's :meth:`state`, written to the run folder as ``data_state.json`` and
passed back in by ``covfuse test``, so evaluation never refits them on other rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from covfuse.errors import UserError
from covfuse.training.config import DataConfig
from covfuse.training.datamodule import MODES, SPLITS, CovfuseDataModule, SplitLoaders, control_covariates

STATE_FILE = "data_state.json"


def is_volume_config(cfg: DataConfig) -> bool:
    """A manifest CSV as data.root means volumes; anything else is a CelebA-format folder."""
    return str(cfg.root).lower().endswith(".csv")


def make_datamodule(cfg: DataConfig, seed: int = 0, pin_memory: bool = False, state: dict | None = None,
                    head: str = "binary"):
    """The data module for ``cfg``: volumes for a manifest CSV, CelebA otherwise. ``head`` (the
    model's) decides how a volume target is read: classes for binary/two-class/multiclass, numbers
    for regression; CelebA targets are binary attributes."""
    if is_volume_config(cfg):
        return VolumeDataModule(cfg, seed=seed, pin_memory=pin_memory, state=state, head=head)
    if head not in ("binary", "two-class"):
        raise UserError(f"model.head {head} needs a manifest CSV (volumes) as data.root; CelebA attributes are "
                        "binary: use head binary or two-class")
    return CovfuseDataModule(cfg, seed=seed, pin_memory=pin_memory)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class VolumeDataModule(SplitLoaders, L.LightningDataModule):
    """Reads the manifest once per process, splits it by subject and serves train/valid/test loaders.

    Args:
        data: the data config; ``root`` is the manifest, ``image_size`` the cube side in voxels.
        seed: the run seed (shuffled covariates); splits and folds come from ``data.split_seed``.
        state: a previous :meth:`state` (encoder + classes) to reuse instead of fitting.
        head: the model's head: binary/two-class (two classes), multiclass (three or more) or
            regression (a numeric target).
    """

    def __init__(self, data: DataConfig | dict[str, Any], seed: int = 0, pin_memory: bool = False,
                 state: dict | None = None, head: str = "binary"):
        super().__init__()
        self.head = head
        self.cfg = data if isinstance(data, DataConfig) else DataConfig(**data)
        self.seed, self.pin_memory, self.given_state = seed, pin_memory, state
        self.manifest = None
        self.meta = None  # CelebA name kept for code that checks whether setup ran
        self.indices: dict[str, np.ndarray] = {}
        self.datasets: dict[str, Any] = {}
        self.covariate_names: list[str] = []
        self.target_name = self.cfg.target
        self.classes: list[str] = []
        self.encoder = None
        self.covariates_real: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.skipped: list[str] = []  # same interface as CovfuseDataModule (volumes never skip)

    # -- preparation -----------------------------------------------------------------------
    def settings(self):
        from covfuse.data.volume_io import Preprocessing

        c = self.cfg
        return Preprocessing(size=c.image_size, geometry=c.geometry, intensity=c.intensity, spacing=c.spacing)

    def cache_dir(self) -> Path:
        from covfuse.data.volume_io import CACHE_DIRNAME

        return Path(self.cfg.root).parent / CACHE_DIRNAME

    def prepare_data(self) -> None:
        """With ``cache: build``, preprocess every volume into the float16 memmap once (rank 0)."""
        if self.cfg.cache != "build":
            return
        from covfuse.data.volume_io import build_volume_cache
        from covfuse.data.volumes import read_manifest

        build_volume_cache(read_manifest(self.cfg.root).files, self.settings(), self.cache_dir())

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        from covfuse.data.volume_io import VolumeDataset, open_volume_cache, volume_shape
        from covfuse.data.volumes import CovariateEncoder, encode_target, read_manifest

        cfg = self.cfg
        if cfg.covariates_mode not in MODES:
            raise UserError(f"unknown covariates_mode {cfg.covariates_mode!r}; choose from {', '.join(MODES)}")
        manifest = read_manifest(cfg.root)
        self.manifest = self.meta = manifest
        self.target_name = manifest.column(cfg.target)
        state = self.given_state or {}
        classes = state.get("classes") or cfg.classes
        regression = self.head == "regression"
        labels, self.classes = encode_target(manifest, self.target_name, "regression" if regression else "classification",
                                             None if regression else classes)
        if self.head == "multiclass" and len(self.classes) < 3:
            raise UserError(f"{manifest.path}: target {self.target_name!r} has {len(self.classes)} classes "
                            f"{self.classes}; use model.head binary for two classes")
        if not regression and self.head != "multiclass" and len(self.classes) != 2:
            raise UserError(f"{manifest.path}: target {self.target_name!r} has {len(self.classes)} classes "
                            f"{self.classes}; the binary head needs two (set data.classes to pick them, "
                            "or use model.head multiclass)")
        self.labels = labels
        self.indices = self._split_indices(manifest, labels)
        if "encoder" in state:
            self.encoder = CovariateEncoder.from_dict(state["encoder"])
        else:
            self.encoder = CovariateEncoder.fit(manifest, cfg.covariates, self.indices["train"], cfg.categorical)
        real = self.encoder.transform(manifest)
        self.covariates_real, self.covariate_names = real, self.encoder.feature_names
        volume_shape(manifest.files[0], manifest.where(0))  # a wrong kind of file fails here, not in a worker
        settings = self.settings()
        cache = None if cfg.cache == "off" else open_volume_cache(manifest.files, settings, self.cache_dir())
        for offset, split in enumerate(SPLITS):
            idx = self.indices[split]
            table = real
            if cfg.covariates_mode != "real":
                table = np.zeros_like(real)
                table[idx] = control_covariates(real[idx], cfg.covariates_mode, seed=self.seed * 1000 + offset)
            self.datasets[split] = VolumeDataset(manifest.files, idx, table, labels, settings,
                                                 train=(split == "train" and cfg.augment), cache=cache)

    def _split_indices(self, manifest, labels: np.ndarray) -> dict[str, np.ndarray]:
        from covfuse.data.volumes import subject_folds, subject_split

        cfg = self.cfg
        split = subject_split(manifest, cfg.split_seed)  # not the run seed: seeds vary training, not the samples
        if cfg.folds == 0:
            out = {name: np.flatnonzero(split == k).astype(np.int64) for k, name in enumerate(SPLITS)}
        else:
            if cfg.folds < 2 or not 0 <= cfg.fold < cfg.folds:
                raise UserError(f"data.folds must be 0 or >= 2 and data.fold in 0..folds-1, got folds={cfg.folds}, fold={cfg.fold}")
            stratify = None if self.head == "regression" else labels  # classes, not continuous values
            train, valid = subject_folds(manifest, split, cfg.folds, cfg.split_seed, stratify=stratify)[cfg.fold]
            out = {"train": train, "valid": valid, "test": np.flatnonzero(split == 2).astype(np.int64)}
        for name, idx in out.items():
            if len(idx) == 0:
                raise UserError(f"{manifest.path}: the {name} split is empty; every split needs subjects")
        return out

    def target_stats(self) -> dict[str, float]:
        """Mean and sd of the training split's target (regression standardises with them)."""
        y = self.labels[self.indices["train"]].astype(np.float64)
        sd = float(y.std(ddof=1)) if len(y) > 1 else 1.0
        return {"mean": float(y.mean()), "sd": sd if sd > 0 else 1.0}

    def state(self) -> dict:
        """What evaluation must reuse: the fitted covariate encoder, the class order, the preprocessing."""
        from dataclasses import asdict

        return {"encoder": self.encoder.to_dict(), "classes": self.classes, "target": self.target_name,
                "preprocessing": asdict(self.settings())}

    # -- loaders: SplitLoaders._loader with DataLoader's default collate -------------------
    def filenames(self, index: np.ndarray) -> list[str]:
        """The manifest's ``path`` of each row (unique per volume): the id in predictions.csv."""
        return [self.manifest.columns["path"][int(i)] for i in index]

    def groups(self, index: np.ndarray) -> list[str]:
        """The subject of each row: the cluster every interval resamples."""
        return [str(self.manifest.subjects[int(i)]) for i in index]

