"""Experiment trackers for a run (TensorBoard, MLflow: Lightning's own loggers), tagged with the run's place in
a study, plus the final metrics with their CIs, the run's settings and its figures once it is scored.

``trainer.logger`` lists the loggers: ``csv`` (metrics.csv, always written: plots and reports read it),
``tensorboard`` (``<run>/tensorboard/``) and ``mlflow`` (``trainer.tracking_uri``, else
``$MLFLOW_TRACKING_URI``, else MLflow's recommended SQLite store ``mlflow.db`` beside the runs: the study
folder for a study run, so one MLflow experiment per study holds all its runs, artifacts in ``mlartifacts/``).
A study's runs nest in MLflow as study -> cell -> run (seed, fold) or trial; the study and cell runs' ids are
kept in ``<study>/tracking.json``. Every tracker gets the same tags: study, cell, settings, seed, fold (a
k-fold run), trial (a search trial), state (a study's run or trial: running, then how it ended), run. The MLflow
run id is kept in ``<run>/tracking.json`` so ``--resume`` continues the same MLflow run. TensorBoard's HParams
dashboard gets each run's settings, state and final metrics (one record per run, replaced when its state changes).

Several processes (SLURM tasks) share one store: a new SQLite store's tables and the experiment are created once,
under a lock file beside the store (:func:`open_store`), before any run logs to it; a study's parent runs are
created and ended under ``<study>/.tracking.lock`` (:func:`study_parents`, :func:`end_parents`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from covfuse.io import atomic_write_text
from covfuse.training.config import check_loggers, flatten
from covfuse.training.lock import folder_lock

STATE = "tracking.json"
STORE = "mlflow.db"
ARTIFACTS = "mlartifacts"
DEFAULT_EXPERIMENT = "covfuse"
PARENT = "mlflow.parentRunId"  # MLflow's own tag for a nested run (its UI and search_runs read it)
# How a study's run or trial ended (its ``state`` tag) -> the MLflow status of its run. Pruning ends a trial as
# designed; Ctrl-C/SIGTERM (interrupted) and a dead process (killed) are MLflow's KILLED.
END_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED",
              "killed": "KILLED"}
TRACKING_LOCK = ".tracking.lock"
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
    """The tags every tracker gets, only those that apply: run, seed; study, cell, settings (JSON), kind (trial /
    run) and state (``running`` until :func:`end_run` says how it ended) for a study's runs; fold for a k-fold run;
    trial for a search trial."""
    context = context or Context()
    out = {"run": config.name, "seed": str(config.seed)}
    if context.study:
        out.update(study=context.study, cell=context.cell or "", kind="trial" if context.trial is not None else "run",
                   settings=json.dumps(context.settings, sort_keys=True, default=str), state="running")
    if config.data.folds:
        out["fold"] = str(config.data.fold)
    if context.trial is not None:
        out["trial"] = str(context.trial)
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


def _store_lock(uri: str):
    """The lock of a SQLite store: ``.<file>.lock`` beside the database file; None for other stores (a server
    migrates its own database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return folder_lock(path.parent, f".{path.name}.lock")


def open_store(uri: str, experiment: str, artifact_location: str | None) -> str:
    """The id of ``experiment`` in the store at ``uri``, creating the store's tables and the experiment if they do
    not exist. Opening a new SQLite store runs MLflow's schema migration, which two processes must not run at once
    (the second fails: "table ... already exists"), so it happens under the store's lock; the experiment is created
    there too. Cheap once both exist: a study calls it before its first run, and every run before its logger."""
    from mlflow.exceptions import MlflowException  # lazy: covfuse[mlflow], only where a run logs to it
    from mlflow.tracking import MlflowClient  # lazy: as above

    with _store_lock(uri) or nullcontext():
        client = MlflowClient(uri)  # opens the store: a new one is created and migrated here
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
            except MlflowException:  # a server store, where another process created it meanwhile
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        else:
            experiment_id = found.experiment_id
    return experiment_id


def experiment_name(context: Context | None) -> str:
    """One MLflow experiment per study; lone runs share ``covfuse``."""
    return context.study if context and context.study else DEFAULT_EXPERIMENT


def prepare(config, context: Context | None) -> None:
    """Create what the run's trackers share with other processes before any run starts: the MLflow store and
    experiment, and a study's study and cell runs (a study calls this for each cell before its first run)."""
    if "mlflow" not in check_loggers(config.trainer.logger):
        return
    uri = tracking_uri(config, context)
    experiment_id = open_store(uri, experiment_name(context), artifact_location(config, context))
    if context and context.study_dir and context.study:
        from mlflow.tracking import MlflowClient  # lazy: covfuse[mlflow], only where a run logs to it

        study_parents(MlflowClient(uri), experiment_id, context, uri, reopen=False)


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
        experiment = experiment_name(context)
        name = f"{context.cell}/{config.name}" if context and context.cell else config.name
        uri, location = tracking_uri(config, context), artifact_location(config, context)
        experiment_id = open_store(uri, experiment, location)  # before the logger's client opens the store
        logger = _epoch_once(MLFlowLogger)(experiment_name=experiment, run_name=name, tracking_uri=uri, tags=run_tags,
                                           run_id=run_id, artifact_location=location)
        logger._experiment_id = experiment_id  # noqa: SLF001 (the logger would look it up, or create it, again)
        out.append(logger)
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


def study_parents(client, experiment_id: str, context: Context, uri: str, *, reopen: bool = True) -> str:
    """The MLflow run id of the context's cell (a child of the study's run), created once per study and store;
    ids are kept in ``<study>/tracking.json`` under the study's tracking lock (SLURM array tasks start together).
    ``reopen``: a cell (and the study) that had ended runs again, as one of its runs is starting."""
    folder = Path(context.study_dir)
    with folder_lock(folder, TRACKING_LOCK):
        state = read_state(folder)
        if state.get("mlflow_tracking_uri") != uri or state.get("mlflow_experiment_id") != experiment_id:
            state = {"mlflow_tracking_uri": uri, "mlflow_experiment_id": experiment_id, "cells": {}}
        status = state.setdefault("status", {})  # run id -> the status last given to it
        if not state.get("mlflow_run_id"):
            run = client.create_run(experiment_id, run_name=context.study, tags={"study": context.study, "kind": "study"})
            state["mlflow_run_id"] = run.info.run_id
            status[run.info.run_id] = "RUNNING"
        cells = state.setdefault("cells", {})
        if context.cell not in cells:
            run = client.create_run(experiment_id, run_name=context.cell,
                                    tags={"study": context.study, "cell": context.cell, "kind": "cell",
                                          PARENT: state["mlflow_run_id"]})
            cells[context.cell] = run.info.run_id
            status[run.info.run_id] = "RUNNING"
        for run_id in (state["mlflow_run_id"], cells[context.cell]) if reopen else ():
            if status.get(run_id, "RUNNING") != "RUNNING":
                client.update_run(run_id, status="RUNNING")
                status[run_id] = "RUNNING"
        atomic_write_text(folder / STATE, json.dumps(state, indent=1) + "\n")
        return cells[context.cell]


def parent_status(cells: dict[str, str]) -> str:
    """The status of a study's run from its cells' (all of them, started or not): RUNNING while one runs, FINISHED
    once all have, FAILED when one failed, else KILLED (stopped before the end)."""
    values = set(cells.values())
    if "RUNNING" in values:
        return "RUNNING"
    if values <= {"FINISHED"}:
        return "FINISHED"
    return "FAILED" if "FAILED" in values else "KILLED"


def end_parents(study_dir: Path, cells: dict[str, str]) -> None:
    """Give a study's MLflow cell runs the status ``cells`` says (cell -> RUNNING / FINISHED / FAILED / KILLED, for
    every cell of the study) and its study run the one :func:`parent_status` derives. Only what changed is written
    (``<study>/tracking.json`` keeps the status last given to each), so a study that logged nothing to MLflow, or
    whose parents are as they should be, costs no MLflow call. A store that cannot be reached now only warns."""
    folder = Path(study_dir)
    if not read_state(folder).get("mlflow_run_id"):
        return
    try:
        with folder_lock(folder, TRACKING_LOCK):
            state = read_state(folder)
            status = state.setdefault("status", {})
            wanted = {run_id: cells[cell] for cell, run_id in state.get("cells", {}).items() if cell in cells}
            wanted[state["mlflow_run_id"]] = parent_status(cells)
            changed = {run_id: s for run_id, s in wanted.items() if status.get(run_id, "RUNNING") != s}
            if not changed:
                return
            client = _client(state)
            for run_id, value in changed.items():
                if value == "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                else:
                    client.set_terminated(run_id, value)
                status[run_id] = value
            atomic_write_text(folder / STATE, json.dumps(state, indent=1) + "\n")
    except Exception as exc:  # noqa: BLE001 (the study's own state is in its folder; the tracker follows it)
        logging.getLogger("covfuse.tracking").warning("could not end the MLflow runs of study %s: %s", folder, exc)


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
                parent = study_parents(client, logger._experiment_id, context, logger._tracking_uri)  # noqa: SLF001
                run_tags = {**run_tags, PARENT: parent}
                logger.tags = {**(logger.tags or {}), **run_tags}
            client = logger.experiment
            if client.get_run(logger.run_id).info.status != "RUNNING":  # a resumed run runs again
                client.update_run(logger.run_id, status="RUNNING")
            for key, value in run_tags.items():  # a resumed run keeps its tags current
                client.set_tag(logger.run_id, key, value)
            _log_params(client, logger.run_id, params(config, context))
            state["mlflow_run_id"] = logger.run_id
            state["mlflow_tracking_uri"] = logger._tracking_uri  # noqa: SLF001
        elif isinstance(logger, TensorBoardLogger):
            for key, value in run_tags.items():
                if key != "state":  # written once known (end_run)
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


def end_run(run_dir: Path, state: str, config=None, context: Context | None = None) -> None:
    """Say how a study's run or trial ended (``state``: complete, pruned, failed, interrupted or killed) in the
    trackers it logged to: MLflow's ``state`` tag and run status (:data:`END_STATUS`); TensorBoard's HParams record
    (settings from ``config`` and ``context``, with the state) and, for a trial, its ``tags/state`` text. Called by
    the process that ran it, or by the next command that finds its process dead. A tracker that cannot be
    reached now only warns: the outcome is already in the study's own files (and a search's journal)."""
    run_dir = Path(run_dir)
    try:
        saved = read_state(run_dir)
        if saved.get("mlflow_run_id") and saved.get("mlflow_tracking_uri"):
            client = _client(saved)
            client.set_tag(saved["mlflow_run_id"], "state", state)
            client.set_terminated(saved["mlflow_run_id"], END_STATUS[state])
        board = run_dir / "tensorboard"
        if board.is_dir():
            if context is not None and context.trial is not None:
                from torch.utils.tensorboard import SummaryWriter  # lazy: covfuse[tensorboard], where a run logs to it

                with SummaryWriter(str(board)) as writer:
                    writer.add_text("tags/state", state, 0)
            if config is not None and (state != "complete" or not list(board.glob(f"*{HPARAMS}"))):
                values = {}
                if (run_dir / "metrics.json").is_file():
                    values = final_metrics(json.loads((run_dir / "metrics.json").read_text()))
                hparams_record(board, run_settings(config, context), values, state)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("covfuse.tracking").warning("could not mark %s %s in its trackers: %s", run_dir, state, exc)


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
            writer.flush()
            if config is not None:
                hparams_record(Path(run_dir) / "tensorboard", run_settings(config, context), values, "complete")


HPARAMS = ".hparams"  # suffix of the event file that holds a run's HParams record


def run_settings(config, context: Context | None) -> dict[str, Any]:
    """What TensorBoard's HParams dashboard shows of a run: its parameters (:func:`params`) and its trial number."""
    return {**params(config, context), **({"trial": context.trial} if context and context.trial is not None else {})}


def hparams_record(board: Path, settings: dict[str, Any], values: dict[str, float], state: str) -> None:
    """TensorBoard's HParams record (experiment, session start and end) of one run in its own event file
    ``*.hparams`` in ``board``, replacing the run's previous record (TensorBoard reads the first record of a run, so
    a run killed and then resumed must not keep its old one): its settings and ``state`` -> the final metrics,
    whose values the dashboard reads from the ``final/...`` scalars logged beside it. The session ends in success
    when the run completed or was pruned, else in failure."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: covfuse[tensorboard], where a run logs to it
    from torch.utils.tensorboard.summary import hparams  # lazy: as above

    old = list(board.glob(f"*{HPARAMS}"))
    metric_names = {k: v for k, v in values.items() if not k.endswith(("_ci_lo", "_ci_hi"))}
    experiment, start, end = hparams({**settings, "state": state}, metric_names)
    if END_STATUS.get(state) != "FINISHED":  # torch writes every session as a success
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2  # lazy: as above

        value = end.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        data.session_end_info.status = api_pb2.STATUS_FAILURE
        value.metadata.plugin_data.content = data.SerializeToString()
    with SummaryWriter(str(board), filename_suffix=HPARAMS) as writer:
        for summary in (experiment, start, end):
            writer._get_file_writer().add_summary(summary)  # noqa: SLF001 (torch's own add_hparams writes a sub-run)
    for path in old:
        path.unlink(missing_ok=True)
