"""Experiment trackers for a run (TensorBoard, MLflow: Lightning's own loggers), tagged with the run's place in
a study, plus the final metrics with their CIs, the run's settings and its figures once it is scored.

``trainer.logger`` lists the loggers: ``csv`` (metrics.csv, always written: plots and reports read it),
``tensorboard`` (``<run>/tensorboard/``) and ``mlflow`` (``trainer.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else MLflow's recommended SQLite store ``mlflow.db`` beside the runs: the study
folder for a study run, so one MLflow experiment per study holds all its runs, artifacts in ``mlartifacts/``).
A study's runs nest in MLflow as study -> cell -> run (seed, fold) or trial; the study and cell runs' ids are
kept in ``<study>/tracking.json``. Every tracker gets the same tags: study, cell, settings, seed, fold (a
k-fold run), trial and state (a search trial), run. The MLflow run id is kept in ``<run>/tracking.json`` so
``--resume`` continues the same MLflow run. TensorBoard's HParams dashboard gets each run's settings and final
metrics.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from covfuse.io import atomic_write_text
from covfuse.training.config import check_loggers, flatten

STATE = "tracking.json"
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
DEFAULT_EXPERIMENT = "covfuse"
PARENT = "mlflow.parentRunId"  # MLflow's own tag for a nested run (its UI and search_runs read it)
# Settings every run logs as parameters (the cell's and the search's settings are added to these)
PARAMS = ("seed", "data.root", "data.batch_size", "data.image_size", "data.covariates", "trainer.max_epochs",
          "optim.optimizer", "optim.lr", "optim.weight_decay", "optim.schedule", "model.backbone", "model.fusion",
          "model.head")
# The user's $MLFLOW_TRACKING_URI, read before any run: mlflow.set_tracking_uri (which Lightning's logger calls)
# overwrites the variable, and the next run of a sweep in this process would follow the previous run's store.
_USER_URI = os.environ.get("MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Context:
    """Where a run belongs: its study (None for a lone run), study folder, cell, the cell's settings and, for a
    search trial, the trial's number."""

    study: str | None = None
    study_dir: str | None = None
    cell: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    trial: int | None = None


def study_context(study: str, study_dir: str | Path, cell: str, settings: dict[str, Any], *,
                  trial: int | None = None) -> Context:
    return Context(study, str(study_dir), cell, dict(settings), trial)


def tags(config, context: Context | None) -> dict[str, str]:
    """The tags every tracker gets, only those that apply: run, seed; study, cell and settings (JSON) for a study
    run; fold for a k-fold run; trial and kind (trial / run) for a study's runs."""
    context = context or Context()
    out = {"run": config.name, "seed": str(config.seed)}
    if context.study:
        out.update(study=context.study, cell=context.cell or "", kind="trial" if context.trial is not None else "run",
                   settings=json.dumps(context.settings, sort_keys=True, default=str))
    if config.data.folds:
        out["fold"] = str(config.data.fold)
    if context.trial is not None:
        out.update(trial=str(context.trial), state="running")
    return out


def params(config, context: Context | None) -> dict[str, Any]:
    """The run's settings by dotted key: batch size, epochs, seed, data root ... and the cell's (search's) own;
    numbers stay numbers (TensorBoard's HParams filters on them), anything else is a string."""
    flat = flatten(config)
    keys = [*PARAMS, *(k for k in (context.settings if context else {}) if k not in PARAMS)]
    out = {}
    for key in keys:
        if key in flat:
            value = flat[key]
            out[key] = value if isinstance(value, (bool, int, float)) else (
                ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))[:500]
    return out


def tracking_uri(config, context: Context | None) -> str:
    """trainer.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite store beside the runs (the study folder)."""
    uri = config.trainer.tracking_uri or _USER_URI
    if not uri:
        uri = f"sqlite:///{store_root(config, context) / STORE}"
    return uri


def store_root(config, context: Context | None) -> Path:
    """The folder of the default store: the study folder, or runs_dir for a lone run."""
    return (Path(context.study_dir) if context and context.study_dir else Path(config.runs_dir)).resolve()


def artifact_location(config, context: Context | None) -> str | None:
    """Artifacts beside the default store (MLflow would put them under the current directory otherwise)."""
    if config.trainer.tracking_uri or _USER_URI:
        return None
    return (store_root(config, context) / ARTIFACTS).as_uri()


def read_state(run_dir: Path) -> dict:
    path = Path(run_dir) / STATE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _epoch_once(cls):
    """A Lightning logger that logs ``epoch`` once per epoch: Lightning adds it to every metrics dict it logs
    (the step's loss, the learning rate, validation ...), which drew the same point several times per step."""

    class Logger(cls):
        _last_epoch = None

        def log_metrics(self, metrics, step=None):
            metrics = dict(metrics)
            epoch = metrics.pop("epoch", None)
            if epoch is not None and epoch != self._last_epoch:
                metrics["epoch"] = epoch
                self._last_epoch = epoch
            if metrics:
                super().log_metrics(metrics, step)

        def log_hyperparams(self, params, *args, **kwargs):
            """Lightning logs the module's constructor arguments here at fit start; the trackers get the run's
            settings from :func:`start` (MLflow params) and :func:`log_final` (TensorBoard HParams) instead."""

    Logger.__name__ = Logger.__qualname__ = cls.__name__
    return Logger


def make_loggers(config, run_dir: Path, context: Context | None, *, resume: bool = False) -> list:
    """The Lightning loggers besides the CSV one, built without writing anything yet."""
    names = check_loggers(config.trainer.logger)
    out = []
    run_tags = tags(config, context)
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        out.append(_epoch_once(TensorBoardLogger)(save_dir=str(run_dir), name="tensorboard", version="",
                                                  default_hp_metric=False))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        run_id = read_state(run_dir).get("mlflow_run_id") if resume else None
        experiment = context.study if context and context.study else DEFAULT_EXPERIMENT
        name = f"{context.cell}/{config.name}" if context and context.cell else config.name
        out.append(_epoch_once(MLFlowLogger)(experiment_name=experiment, run_name=name,
                                             tracking_uri=tracking_uri(config, context), tags=run_tags, run_id=run_id,
                                             artifact_location=artifact_location(config, context)))
    return out


def callbacks(loggers: Sequence) -> list:
    """Callbacks the trackers need: the learning rate of each optimiser step (it is tuned and scheduled)."""
    if not loggers:
        return []
    from lightning.pytorch.callbacks import Callback

    class LearningRate(Callback):
        """``train/lr`` to the trackers (not metrics.csv) every ``log_every_n_steps`` steps, as the loss is."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            # the rate this step uses (before the scheduler steps), at the step the loss is logged with
            if not trainer.optimizers or not trainer._logger_connector.should_update_logs:  # noqa: SLF001
                return
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
            for logger in trainer.loggers:
                if logger in loggers:
                    logger.log_metrics({"train/lr": lr}, step=trainer.fit_loop.epoch_loop._batches_that_stepped)  # noqa: SLF001

    return [LearningRate()]


def _lock(folder: Path):
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".tracking.lock"))


def study_parents(client, experiment_id: str, context: Context, uri: str) -> str:
    """The MLflow run id of the context's cell (a child of the study's run), created once per study and store;
    ids are kept in ``<study>/tracking.json`` under a file lock (SLURM array tasks start together)."""
    folder = Path(context.study_dir)
    with _lock(folder):
        state = read_state(folder)
        if state.get("mlflow_tracking_uri") != uri or state.get("mlflow_experiment_id") != experiment_id:
            state = {"mlflow_tracking_uri": uri, "mlflow_experiment_id": experiment_id, "cells": {}}
        if not state.get("mlflow_run_id"):
            run = client.create_run(experiment_id, run_name=context.study, tags={"study": context.study, "kind": "study"})
            state["mlflow_run_id"] = run.info.run_id
        cells = state.setdefault("cells", {})
        if context.cell not in cells:
            run = client.create_run(experiment_id, run_name=context.cell,
                                    tags={"study": context.study, "cell": context.cell, "kind": "cell",
                                          PARENT: state["mlflow_run_id"]})
            cells[context.cell] = run.info.run_id
        atomic_write_text(folder / STATE, json.dumps(state, indent=1) + "\n")
        return cells[context.cell]


def start(loggers: Sequence, config, run_dir: Path, context: Context | None) -> None:
    """Open the trackers' runs (a study's nested under its cell's), tag them, log the settings and remember the
    MLflow run id (rank 0, once the run folder exists)."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    state = read_state(run_dir)
    run_tags = tags(config, context)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            if context and context.study_dir and context.study:
                client = logger._mlflow_client  # noqa: SLF001 (the parent must be tagged before the run exists)
                experiment = client.get_experiment_by_name(context.study)
                experiment_id = (experiment.experiment_id if experiment is not None else
                                 client.create_experiment(context.study, artifact_location=logger._artifact_location))  # noqa: SLF001
                logger._experiment_id = experiment_id  # noqa: SLF001
                run_tags = {**run_tags, PARENT: study_parents(client, experiment_id, context, logger._tracking_uri)}  # noqa: SLF001
                logger.tags = {**(logger.tags or {}), **run_tags}
            client = logger.experiment
            for key, value in run_tags.items():  # a resumed run keeps its tags current
                client.set_tag(logger.run_id, key, value)
            _log_params(client, logger.run_id, params(config, context))
            state["mlflow_run_id"] = logger.run_id
            state["mlflow_tracking_uri"] = logger._tracking_uri  # noqa: SLF001
        elif isinstance(logger, TensorBoardLogger):
            for key, value in run_tags.items():
                if key != "state":  # a trial's state is written once known (tag_run)
                    logger.experiment.add_text(f"tags/{key}", value, 0)
    if state:
        atomic_write_text(Path(run_dir) / STATE, json.dumps(state, indent=1) + "\n")


def _log_params(client, run_id: str, values: dict[str, str]) -> None:
    """MLflow params are write-once: a resumed run logs only those it lacks."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    new = [Param(k, str(v)) for k, v in values.items() if k not in have]
    if new:
        client.log_batch(run_id, params=new)


def _client(state: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(state["mlflow_tracking_uri"])


def tag_run(run_dir: Path, values: dict[str, str]) -> None:
    """Tags set on a run after it ended (a search trial's state), in the trackers it logged to. A tracker that
    cannot be reached now only warns: the trial's outcome is already in Optuna's journal."""
    try:
        state = read_state(run_dir)
        if state.get("mlflow_run_id") and state.get("mlflow_tracking_uri"):
            client = _client(state)
            for key, value in values.items():
                client.set_tag(state["mlflow_run_id"], key, value)
        if (Path(run_dir) / "tensorboard").is_dir():
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(Path(run_dir) / "tensorboard")) as writer:
                for key, value in values.items():
                    writer.add_text(f"tags/{key}", value, 0)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("covfuse.tracking").warning("could not tag %s with %s: %s", run_dir, values, exc)


def finish_study(study_dir: Path) -> None:
    """Mark a study's MLflow study and cell runs finished (its runs and trials all are)."""
    state = read_state(study_dir)
    if state.get("mlflow_run_id"):
        client = _client(state)
        for run_id in [state["mlflow_run_id"], *state.get("cells", {}).values()]:
            client.set_terminated(run_id, "FINISHED")


def log_report(study_dir: Path, files: Sequence[str | Path]) -> bool:
    """The study's report files (report, table, forest plot ...) as artifacts of its MLflow study run; False when
    the study logged nothing to MLflow."""
    state = read_state(study_dir)
    if not state.get("mlflow_run_id"):
        return False
    client = _client(state)
    for name in files:
        path = Path(study_dir) / name
        if path.is_file():
            client.log_artifact(state["mlflow_run_id"], str(path), str(Path(name).parent) if Path(name).parent != Path(".") else None)
    return True


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


def log_final(loggers: Sequence, metrics: dict, run_dir: Path, step: int, config=None,
              context: Context | None = None) -> None:
    """Log the scored run: final metrics with CIs, its figures and metrics.json, and (TensorBoard HParams) its
    settings beside the final metrics; the MLflow run ends FINISHED."""
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
            if config is not None:
                _hparams(writer, {**params(config, context), **({"trial": context.trial} if context and
                                                                context.trial is not None else {})}, values)
            writer.flush()


def _hparams(writer, settings: dict[str, Any], values: dict[str, float]) -> None:
    """TensorBoard's HParams record (experiment, session start and end) of one run: settings -> final metrics,
    whose values the dashboard reads from the ``final/...`` scalars logged beside it."""
    from torch.utils.tensorboard.summary import hparams

    metric_names = {k: v for k, v in values.items() if not k.endswith(("_ci_lo", "_ci_hi"))}
    for summary in hparams(settings, metric_names):
        writer._get_file_writer().add_summary(summary)  # noqa: SLF001 (torch's own add_hparams writes a sub-run)
