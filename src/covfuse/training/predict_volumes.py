"""Predictions for a table of files (volumes or 2D images) from a run trained on a table (``covfuse predict``).

Everything comes from the run folder, nothing is refitted: the covariate encoder fitted on the
training split and the preprocessing (``data_state.json``), the model (the checkpoint). Raw
covariate values are encoded by that encoder and volumes read by the same
:class:`~covfuse.data.volume_io.VolumeDataset` ``covfuse test`` uses, so a test volume gets the
probability ``predictions.csv`` holds for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from covfuse.data.table import CovariateEncoder, Manifest, is_missing, parse_number
from covfuse.errors import UserError
from covfuse.training.module import CovfuseModule
from covfuse.training.predict import model_covariates, run_predict


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


def check_volumes(manifest: Manifest, where: Callable[[int], str]) -> None:
    """Every file is readable before any is decoded, a bad row naming itself with ``where(i)``: volumes
    by their NIfTI headers, 2D images by existing and not being empty (a decode error names the file)."""
    from covfuse.data.samples import check_readable

    check_readable(manifest, where)


def predict_volumes(module: CovfuseModule, state: dict, manifest: Manifest, encoder: CovariateEncoder, *,
                    batch_size: int = 8, accelerator: str = "auto", precision: str | None = None) -> np.ndarray:
    """The module's prediction per manifest row, in order ((N,) or (N, C); see ``run_predict``): the
    rows encoded by ``encoder`` and the files read as ``covfuse test`` reads its splits (the same dataset)."""
    from covfuse.data.samples import make_dataset, settings_from_state

    covariates = model_covariates(module, encoder.transform(manifest))
    dataset = make_dataset(manifest, np.arange(len(manifest)), covariates, np.zeros(len(manifest)),
                           settings_from_state(state["preprocessing"]))
    return run_predict(module, dataset, batch_size=batch_size, accelerator=accelerator, precision=precision)
