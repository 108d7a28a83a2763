"""Predictions for image files with given covariates, from a trained module (``covfuse predict``).

:func:`run_predict` (the one Lightning predict loop) and :func:`prediction_columns` (what the
output columns are for the module's head) serve images here and volumes
(:mod:`covfuse.training.predict_volumes`) alike.
"""
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
            raise UserError(f"{folders[0]}: a folder, not an image file; give image files (e.g. {folders[0]}/<name>)")
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
    values = np.asarray(rows, dtype=np.float32).reshape(len(paths), len(module.hparams.covariates))
    dataset = ImageFiles(paths, model_covariates(module, values), module.hparams.image_size, module.hparams.preset)
    return run_predict(module, dataset, batch_size=batch_size, accelerator=accelerator, precision=precision)


def run_predict(module: CovfuseModule, dataset: Dataset, *, batch_size: int = 64, accelerator: str = "auto",
                precision: str | None = None) -> np.ndarray:
    """``module.predict_step`` over ``dataset`` in order, on one device: (N,) or (N, C) float32."""
    from covfuse.training.config import TrainerConfig
    from covfuse.training.run import quiet_lightning, resolve_hardware

    hw = resolve_hardware(TrainerConfig(accelerator=accelerator, precision=precision))
    quiet_lightning()
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=hw.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, DataLoader(dataset, batch_size=batch_size, shuffle=False))
    return torch.cat(batches).float().numpy()


def prediction_columns(module: CovfuseModule, values: np.ndarray,
                       classes: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the prediction part of ``covfuse predict``'s CSV, for the module's head.

    ``values`` is what :func:`run_predict` returned (``module.predict_step``); ``classes`` the class
    order (default: the module's; image runs predict one attribute and have none). Binary heads
    give ``P(target)`` (``P(target=positive)`` when the classes are known); a multi-class head one
    ``P(target=class)`` per class and ``predicted_<target>``, the most probable class; a regression
    head ``predicted_<target>`` in the target's units; a survival head ``risk`` (the log relative
    hazard: higher = earlier event; only the order between people means something).
    """
    from covfuse.training.metrics import task_of_head

    task = task_of_head((module.hparams.model or {}).get("head", "binary"))
    target = module.hparams.target
    classes = list(classes or getattr(module.hparams, "classes", None) or [])
    values = np.asarray(values, dtype=np.float64)
    if task == "binary":
        name = f"P({target}={classes[1]})" if len(classes) == 2 else f"P({target})"
        return [name], [[f"{p:.6f}"] for p in values.reshape(-1)]
    if task == "multiclass":
        if values.ndim != 2:
            raise ValueError(f"a multiclass head should predict (N, C) probabilities, got shape {values.shape}")
        names = classes or [str(k) for k in range(values.shape[1])]
        if len(names) != values.shape[1]:
            raise ValueError(f"{values.shape[1]} class probabilities for {len(names)} classes {names}")
        return ([*(f"P({target}={c})" for c in names), f"predicted_{target}"],
                [[*(f"{p:.6f}" for p in row), names[int(row.argmax())]] for row in values])
    if task == "regression":
        return [f"predicted_{target}"], [[f"{v:.6g}"] for v in values.reshape(-1)]
    if task == "survival":
        return ["risk"], [[f"{v:.9g}"] for v in values.reshape(-1)]
    raise UserError(f"covfuse predict does not know the task {task!r} (binary, multiclass, regression, survival)")
