"""Experiment trackers for a run (TensorBoard, MLflow: Lightning's own loggers), tagged with the run's place in
a study, plus the final metrics with their CIs and the run's figures once it is scored.

``trainer.logger`` lists the loggers: ``csv`` (metrics.csv, always written: plots and reports read it),
``tensorboard`` (``<run>/tensorboard/``) and ``mlflow`` (``trainer.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else a file store ``mlruns/`` beside the runs: the study folder for a study
run, so one MLflow experiment per study holds all its runs). Every tracker gets the same tags: study,
cell, settings, seed, fold, run. The MLflow run id is kept in ``<run>/tracking.json`` so ``--resume``
continues the same MLflow run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from covfuse.errors import UserError, suggest

LOGGERS = ("csv", "tensorboard", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> module it needs (and the extra's name)
STATE = "tracking.json"
DEFAULT_EXPERIMENT = "covfuse"
# The user's $MLFLOW_TRACKING_URI, read before any run: mlflow.set_tracking_uri (which Lightning's logger calls)
# overwrites the variable, and the next run of a sweep in this process would follow the previous run's store.
_USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Context:
    """Where a run belongs: its study (None for a lone run), study folder, cell and the cell's settings."""

    study: str | None = None
    study_dir: str | None = None
    cell: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def study_context(study: str, study_dir: str | Path, cell: str, settings: dict[str, Any]) -> Context:
    return Context(study, str(study_dir), cell, dict(settings))


def check_loggers(names: Sequence[str]) -> list[str]:
    """The logger names, each known and its package installed (one line naming the extra otherwise)."""
    out = []
    for name in names:
        key = str(name).strip().lower()
        if key not in LOGGERS:
            raise UserError(f"trainer.logger: unknown logger {name!r}{suggest(key, LOGGERS)}; choose from "
                            f"{', '.join(LOGGERS)} (e.g. --trainer.logger [csv,tensorboard])")
        module = _PACKAGES.get(key)
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"trainer.logger {key} needs the {module} package: pip install 'covfuse[{key}]'")
        if key not in out:
            out.append(key)
    return out


def tags(config, context: Context | None) -> dict[str, str]:
    """The tags every tracker gets: study, cell, settings (JSON), seed, fold and the run's name."""
    context = context or Context()
    fold = config.data.fold if config.data.folds else None
    return {"study": context.study or "", "cell": context.cell or "", "run": config.name,
            "settings": json.dumps(context.settings, sort_keys=True, default=str),
            "seed": str(config.seed), "fold": "" if fold is None else str(fold)}


def tracking_uri(config, context: Context | None) -> str:
    """trainer.tracking_uri, else $MLFLOW_TRACKING_URI, else a file store beside the runs (the study folder)."""
    uri = config.trainer.tracking_uri or _USER_URI
    if not uri:
        root = Path(context.study_dir) if context and context.study_dir else Path(config.runs_dir)
        uri = (root / "mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses its file store unless asked: a study's runs may be SLURM array tasks on a shared
        # disk, where the file store is safe and SQLite is not.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def read_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def make_loggers(config, run_dir: Path, context: Context | None, *, resume: bool = False) -> list:
    """The Lightning loggers besides the CSV one, built without writing anything yet."""
    names = check_loggers(config.trainer.logger)
    out = []
    run_tags = tags(config, context)
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        out.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        warnings.filterwarnings("ignore", message=r".*filesystem tracking backend.*")
        run_id = read_state(run_dir).get("mlflow_run_id") if resume else None
        experiment = context.study if context and context.study else DEFAULT_EXPERIMENT
        name = f"{context.cell}/{config.name}" if context and context.cell else config.name
        out.append(MLFlowLogger(experiment_name=experiment, run_name=name, tracking_uri=tracking_uri(config, context),
                                tags=run_tags, run_id=run_id))
    return out


def start(loggers: Sequence, config, run_dir: Path, context: Context | None) -> None:
    """Open the trackers' runs, tag them and remember the MLflow run id (rank 0, once the run folder exists)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    state = read_state(run_dir)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client = logger.experiment
            for key, value in tags(config, context).items():  # a resumed run keeps its tags current
                client.set_tag(logger.run_id, key, value)
            state["mlflow_run_id"] = logger.run_id
            state["mlflow_tracking_uri"] = logger._tracking_uri
        elif isinstance(logger, TensorBoardLogger):
            for key, value in tags(config, context).items():
                logger.experiment.add_text(f"tags/{key}", value or "-", 0)
    if state:
        from covfuse.io import atomic_write_text

        atomic_write_text(Path(run_dir) / STATE, json.dumps(state, indent=1) + "\n")


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's scores per split as flat names: ``final/test/accuracy``, ``final/test/accuracy_ci_lo`` ..."""
    out: dict[str, float] = {}
    for split in ("valid", "test"):
        for key, value in (metrics.get(split) or {}).items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"final/{split}/{key}"] = float(value)
            elif key.endswith("_ci") and isinstance(value, (list, tuple)) and len(value) == 2:
                for end, bound in zip(("lo", "hi"), value):
                    if isinstance(bound, (int, float)) and math.isfinite(bound):
                        out[f"final/{split}/{key}_{end}"] = float(bound)
    return out


def figures(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "plots").glob("*.png"))


def log_final(loggers: Sequence, metrics: dict, run_dir: Path, step: int) -> None:
    """Log the scored run: final metrics with CIs, its figures and metrics.json; the MLflow run ends FINISHED."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    values = final_metrics(metrics)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            client, run_id = logger.experiment, logger.run_id
            for key, value in values.items():
                client.log_metric(run_id, key, value, step=step)
            for path in figures(run_dir):
                client.log_artifact(run_id, str(path), "plots")
            for name in ("metrics.json", "config.yaml"):
                if (Path(run_dir) / name).is_file():
                    client.log_artifact(run_id, str(Path(run_dir) / name))
            client.set_terminated(run_id, "FINISHED")
        elif isinstance(logger, TensorBoardLogger):
            import numpy as np
            from PIL import Image

            writer = logger.experiment
            for key, value in values.items():
                writer.add_scalar(key, value, step)
            for path in figures(run_dir):
                with Image.open(path) as image:
                    writer.add_image(f"plots/{path.stem}", np.asarray(image.convert("RGB")), step, dataformats="HWC")
            writer.flush()
