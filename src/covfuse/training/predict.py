"""Predictions from a trained run (``covfuse predict``), one path for every source: a table of files.

Files named on the command line with covariates become a table too, so a CelebA run, an image
manifest run and a volume run are predicted alike (:func:`predict_table`); :func:`run_predict` is
the one Lightning predict loop and :func:`prediction_columns` gives the output columns of the
module's head. For a table, everything comes from the run
folder, nothing is refitted: the covariate encoder fitted on the training split and the
preprocessing (``data_state.json``), the model (the checkpoint). Raw covariate values are encoded
by that encoder and files read by the same dataset ``covfuse test`` uses
(:func:`covfuse.data.samples.make_dataset`), so a test file gets the probability
``predictions.csv`` holds for it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from covfuse.data.samples import check_readable, make_dataset, settings_from_state
from covfuse.data.table import CovariateEncoder, Manifest, is_missing, parse_number
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


def prediction_columns(module: CovfuseModule, values: np.ndarray,
                       classes: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the prediction part of ``covfuse predict``'s CSV, for the module's head.

    ``values`` is what :func:`run_predict` returned (``module.predict_step``); ``classes`` the class
    order (default: the module's; image runs predict one attribute and have none). Binary heads
    give ``P(target)`` (``P(target=positive)`` when the classes are known); a multi-class head one
    ``P(target=class)`` per class and ``predicted_<target>``, the most probable class; a regression
    head ``predicted_<target>`` in the target's units; a survival head ``risk`` (the log relative
    hazard: higher = earlier event; only the order between people means something)
    (:meth:`covfuse.training.tasks.Task.table`).
    """
    task = task_of((module.hparams.model or {}).get("head", "binary"))
    classes = list(classes or getattr(module.hparams, "classes", None) or [])
    return task.table(module.hparams.target, classes, np.asarray(values, dtype=np.float64))


def _raw(x: float) -> str:
    return f"{round(x, 6) + 0.0:g}"  # + 0.0 turns -0.0 into 0


def check_covariates(manifest: Manifest, encoder: CovariateEncoder, seen: dict | None,
                     where: Callable[[int], str], *, extrapolate: bool = False,
                     marks: dict[int, list[str]] | None = None) -> None:
    """Refuse what the run cannot encode faithfully, naming the row (``where(i)``): a covariate column
    the manifest lacks, a word in a numeric column, a missing value where training had no missing
    indicator, and (unless ``extrapolate``) a value the training split never held: a level the
    one-hot never saw, or a number outside the training range / set of values.

    ``seen`` is the module's ``covariate_values``: per *encoded* feature, the training split's values
    or range. Numbers are compared after encoding (the same float32 arithmetic as the table it came
    from) and shown in raw units. With ``marks`` (a table: one bad row must not cost the others), a
    value outside what training held is noted under its row index there instead of refused.
    """
    columns = [manifest.column(spec["name"]) for spec in encoder.specs]  # a missing column: the reader's line
    hint = "; the model would extrapolate (pass --extrapolate to predict anyway)"
    for spec, name in zip(encoder.specs, columns):
        info = (seen or {}).get(spec["name"]) or {}
        if spec["kind"] == "numeric" and "values" in info:  # a run from before numbers kept their range
            info = {"min": min(info["values"]), "max": max(info["values"])}
        for i, value in enumerate(manifest.columns[name]):
            if is_missing(value):
                if not spec["missing"]:
                    raise UserError(f"{where(i)}: {name} is missing, but the run never saw it missing (it has no "
                                    f"{name}_missing indicator); give a value")
                continue
            if spec["kind"] == "categorical":
                if value not in spec["levels"] and marks is not None:
                    marks.setdefault(i, []).append(f"{name}={value} (unseen level)")
                elif value not in spec["levels"] and not extrapolate:
                    raise UserError(f"{where(i)}: {name}={value} was never seen in training, which had {name} in "
                                    f"{{{', '.join(spec['levels'])}}}; give one of those (or pass --extrapolate to "
                                    "predict with no level set, as `covfuse test` encodes an unseen level)")
                continue
            number = parse_number(value)
            if number is None:
                raise UserError(f"{where(i)}: non-numeric value {value!r} for numeric covariate {name!r} "
                                "(the run was trained on numbers; give a number, or leave it empty for missing)")
            if extrapolate:
                continue
            mean, std = (0.0, 1.0) if spec["kind"] == "binary" else (spec["mean"], spec["std"])
            z = float(np.float32((number - mean) / std))  # as CovariateEncoder.transform
            raw = lambda v: mean + std * v  # noqa: E731
            if "values" in info and z not in info["values"]:
                # The training table also holds 0 (the imputed mean) when the covariate has missing
                # values; it is accepted (the encoder maps the mean there) but not listed as a choice.
                listed = [v for v in info["values"] if not (spec["missing"] and v == 0.0)]
                if marks is not None:
                    marks.setdefault(i, []).append(f"{name}={value} (training had {'/'.join(_raw(raw(v)) for v in listed)})")
                    continue
                raise UserError(f"{where(i)}: {name}={value} was never seen in training, which had {name} in "
                                f"{{{', '.join(_raw(raw(v)) for v in listed)}}}{hint}")
            if "min" in info and not info["min"] <= z <= info["max"]:
                if marks is not None:
                    marks.setdefault(i, []).append(f"{name}={value} (training range "
                                                   f"{_raw(raw(info['min']))}..{_raw(raw(info['max']))})")
                    continue
                raise UserError(f"{where(i)}: {name}={value} lies outside the training range "
                                f"[{_raw(raw(info['min']))}, {_raw(raw(info['max']))}]{hint}")


def encoder_of(module: CovfuseModule, state: dict, run_dir: Path) -> CovariateEncoder:
    """The run's fitted encoder; its features must be the ones the checkpoint was trained with."""
    encoder = CovariateEncoder.from_dict(state["encoder"])
    if encoder.feature_names != list(module.hparams.covariates):
        raise UserError(f"{run_dir}: data_state.json encodes {encoder.feature_names} but the checkpoint was trained "
                        f"with {list(module.hparams.covariates)}; give the checkpoint of this run")
    return encoder


def check_files(manifest: Manifest, where: Callable[[int], str]) -> None:
    """Every file is readable before any is decoded, a bad row naming itself with ``where(i)``: volumes
    by their NIfTI headers, 2D images by existing and not being empty (a decode error names the file)."""
    check_readable(manifest, where)


def predict_table(module: CovfuseModule, state: dict, manifest: Manifest, encoder: CovariateEncoder, *,
                    batch_size: int = 8, accelerator: str = "auto", precision: str | None = None) -> np.ndarray:
    """The module's prediction per manifest row, in order ((N,) or (N, C); see ``run_predict``): the
    rows encoded by ``encoder`` and the files read as ``covfuse test`` reads its splits (the same dataset)."""
    covariates = model_covariates(module, encoder.transform(manifest))
    dataset = make_dataset(manifest, np.arange(len(manifest)), covariates, np.zeros(len(manifest)),
                           settings_from_state(state["preprocessing"]))
    return run_predict(module, dataset, batch_size=batch_size, accelerator=accelerator, precision=precision)
