"""Predictions from a trained run (``covfuse predict``), one path for every source: a table of files.

:func:`predict_rows` is that path. Files named on the command line with covariate values and a
``--csv`` table are both tables, checked against what training held
(:func:`~covfuse.data.table.check_covariate_values`) and predicted alike (:func:`predict_table`),
whether the run trained on CelebA, an image manifest, volumes or BIDS; :func:`run_predict` is the
one Lightning predict loop and :func:`prediction_columns` gives the output columns of the module's
head. Everything comes from the run folder, nothing is refitted (:func:`run_state`): the covariate
encoder fitted on the training split and the preprocessing (``data_state.json``), the model (the
checkpoint). Raw covariate values are encoded by that encoder and files read by the same dataset
``covfuse test`` uses (:func:`covfuse.data.samples.make_dataset`), so a test file gets the
probability ``predictions.csv`` holds for it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from covfuse.data.samples import check_readable, make_dataset, settings_from_state
from covfuse.data.table import CovariateEncoder, SampleTable, check_covariate_values
from covfuse.errors import UserError
from covfuse.training.config import TrainerConfig
from covfuse.training.module import CovfuseModule
from covfuse.training.tasks import task_of
from covfuse.training.trainer import one_device_trainer, resolve_hardware


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


def run_predict(module: CovfuseModule, dataset: Dataset, *, batch_size: int = 64, accelerator: str = "auto",
                precision: str | None = None) -> np.ndarray:
    """``module.predict_step`` over ``dataset`` in order, on one device: (N,) or (N, C) float32."""
    hw = resolve_hardware(TrainerConfig(accelerator=accelerator, precision=precision))
    trainer = one_device_trainer(accelerator, hw.precision)
    batches = trainer.predict(module, DataLoader(dataset, batch_size=batch_size, shuffle=False))
    return torch.cat(batches).float().numpy()


def prediction_columns(module: CovfuseModule, values: np.ndarray, classes: Sequence[str] | None = None,
                       threshold: float | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the prediction part of ``covfuse predict``'s CSV, for the module's head.

    ``values`` is what :func:`run_predict` returned (``module.predict_step``); ``classes`` the class
    order (default: the module's; image runs predict one attribute and have none). Binary heads
    give ``P(target)`` (``P(target=positive)`` when the classes are known) and, with the run's decision
    ``threshold``, ``predicted_<target>``: the positive class where P >= threshold; a multi-class head one
    ``P(target=class)`` per class and ``predicted_<target>``, the most probable class; a regression
    head ``predicted_<target>`` in the target's units; a survival head ``risk`` (the log relative
    hazard: higher = earlier event; only the order between people means something)
    (:meth:`covfuse.training.tasks.Task.table`).
    """
    task = task_of((module.hparams.model or {}).get("head", "binary"))
    classes = list(classes or getattr(module.hparams, "classes", None) or [])
    return task.table(module.hparams.target, classes, np.asarray(values, dtype=np.float64), threshold)


def run_state(module: CovfuseModule, state: dict | None, run_dir: Path) -> tuple[dict, CovariateEncoder]:
    """What the run saved to read new rows as it read its own: ``data_state.json`` (preprocessing, classes)
    and its fitted encoder, whose features must be the ones the checkpoint was trained with. A run from
    before ``data_state.json`` gets its size and preset, and its 0/1 covariates fed as they are."""
    if state is None:
        names = list(module.hparams.covariates)
        return ({"preprocessing": {"size": module.hparams.image_size, "preset": module.hparams.preset}},
                CovariateEncoder([{"name": n, "kind": "binary", "mean": 0.0, "missing": False} for n in names]))
    encoder = CovariateEncoder.from_dict(state["encoder"])
    if encoder.feature_names != list(module.hparams.covariates):
        raise UserError(f"{run_dir}: data_state.json encodes {encoder.feature_names} but the checkpoint was trained "
                        f"with {list(module.hparams.covariates)}; give the checkpoint of this run")
    return state, encoder


def predict_rows(module: CovfuseModule, state: dict, encoder: CovariateEncoder, *, files: SampleTable | None = None,
                 table: SampleTable | None = None, where: Callable[[int], str] | None = None, strict: bool = False,
                 extrapolate: bool = False, batch_size: int = 64, accelerator: str = "auto",
                 precision: str | None = None,
                 threshold: float | None = None) -> tuple[list[str], list[list[str]], dict[int, list[str]]]:
    """``covfuse predict`` for any source: the rows of ``files`` (files named one by one, their values from
    --covariates) then of ``table`` (a --csv table, row i named by ``where(i)``), every row checked before
    any file is decoded, then predicted as ``covfuse test`` predicts (:func:`predict_table`).

    A value training never held (:func:`~covfuse.data.table.check_covariate_values`) is refused in
    ``files``, and in ``table`` with ``strict``; otherwise ``table`` marks it (one bad row must not cost
    the others). ``extrapolate`` predicts what would be refused. Returns the prediction columns' header,
    one row of cells per input row (:func:`prediction_columns`; ``threshold``: a binary run's decision
    threshold), and the marks by row index.
    """
    seen = module.hparams.get("covariate_values")
    parts: list[tuple[SampleTable, Callable[[int], str]]] = []
    marks: dict[int, list[str]] = {}
    if files is not None:
        check_covariate_values(files, encoder, seen, lambda i: "--covariates", extrapolate=extrapolate)
        parts.append((files, lambda i: ""))  # a file's problems name the file
    if table is not None:
        where = where or table.where
        found: dict[int, list[str]] = {}
        check_covariate_values(table, encoder, seen, where, extrapolate=extrapolate, marks=None if strict else found)
        offset = len(files) if files is not None else 0
        marks = {offset + i: m for i, m in found.items()}
        parts.append((table, where))
    for part, named in parts:
        check_readable(part, named, settings_from_state(state["preprocessing"]))
    values = [predict_table(module, state, part, encoder, batch_size=batch_size, accelerator=accelerator,
                            precision=precision) for part, _ in parts]
    header, rows = prediction_columns(module, np.concatenate(values), state.get("classes"), threshold)
    return header, rows, marks


def predict_table(module: CovfuseModule, state: dict, table: SampleTable, encoder: CovariateEncoder, *,
                  batch_size: int = 8, accelerator: str = "auto", precision: str | None = None) -> np.ndarray:
    """The module's prediction per table row, in order ((N,) or (N, C); see ``run_predict``): the
    rows encoded by ``encoder`` and the files read as ``covfuse test`` reads its splits (the same dataset)."""
    covariates = model_covariates(module, encoder.transform(table))
    dataset = make_dataset(table, np.arange(len(table)), covariates, np.zeros(len(table)),
                           settings_from_state(state["preprocessing"]))
    return run_predict(module, dataset, batch_size=batch_size, accelerator=accelerator, precision=precision)
