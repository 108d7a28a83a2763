"""Probabilities for image files with given covariates, from a trained module (``covfuse predict``)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from covfuse.errors import UserError
from covfuse.training.module import CovfuseModule


class ImageFiles(Dataset):
    """Image files plus a covariate row each, decoded exactly as the training data (same preset and size)."""

    def __init__(self, paths: Sequence[Path], covariates: np.ndarray, image_size: int, preset: str):
        self.paths, self.covariates = [Path(p) for p in paths], torch.as_tensor(covariates, dtype=torch.float32)
        self.image_size, self.preset = image_size, preset
        folders = [p for p in self.paths if p.is_dir()]
        if folders:
            raise UserError(f"{folders[0]}: a folder, not an image file; give image files (e.g. {folders[0]}/*.jpg)")
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise UserError(f"{missing[0]}: no such image file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from covfuse.data.transforms import load_image

        image = load_image(self.paths[i], self.image_size, self.preset)  # names the file if it does not decode
        return {"image": image, "covariates": self.covariates[i], "target": torch.tensor(0.0), "index": torch.tensor(i)}


def model_covariates(module: CovfuseModule, rows: np.ndarray) -> np.ndarray:
    """What the model is fed: the given rows, or the constants it was trained with under zeros/ones."""
    mode = module.hparams.get("covariates_mode", "real")
    if mode == "zeros":
        return np.zeros_like(rows)
    if mode == "ones":
        return np.ones_like(rows)
    if mode == "shuffled":
        warnings.warn("this run was trained with shuffled covariates (a control); its predictions ignore their meaning",
                      stacklevel=2)
    return rows


def predict_images(module: CovfuseModule, paths: Sequence[Path], rows: Sequence[Sequence[float]], *,
                   batch_size: int = 64, accelerator: str = "auto", precision: str | None = None) -> np.ndarray:
    """P(target = 1) per image, in input order; ``precision`` as in the run's trainer config."""
    from covfuse.training.config import TrainerConfig
    from covfuse.training.run import quiet_lightning, resolve_hardware

    values = np.asarray(rows, dtype=np.float32).reshape(len(paths), len(module.hparams.covariates))
    dataset = ImageFiles(paths, model_covariates(module, values), module.hparams.image_size, module.hparams.preset)
    hw = resolve_hardware(TrainerConfig(accelerator=accelerator, precision=precision))
    quiet_lightning()
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=hw.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, DataLoader(dataset, batch_size=batch_size, shuffle=False))
    return torch.cat(batches).float().numpy()
