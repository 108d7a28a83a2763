"""One named run end to end: ``fit_run`` (``covfuse fit``) and ``evaluate_run`` (``covfuse test``).

``fit_run(config)`` writes ``<runs_dir>/<name>/``: config.yaml, log.txt, metrics.csv,
checkpoints/{best,last}.ckpt, plots/loss.png, then predictions.csv and metrics.json from the best
checkpoint on valid and test. ``evaluate_run(run_dir)`` redoes the last two. The parts live beside
this file: the folder in :mod:`~covfuse.training.rundir`, the Trainer in
:mod:`~covfuse.training.trainer`, the files written in :mod:`~covfuse.training.results`. In a
distributed run every process runs ``fit_run`` and only global rank 0 touches the folder.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np

from covfuse.errors import UserError
from covfuse.training import config as cfgmod
from covfuse.training import runlog, survival_run
from covfuse.training import tracking as trackmod
from covfuse.training.callbacks import LineProgress
from covfuse.training.config import RunConfig
from covfuse.training.curves import plot_losses
from covfuse.training.datamodule import STATE_FILE, CovfuseDataModule, read_state
from covfuse.training.lock import RunLock
from covfuse.training.module import CovfuseModule, compile_model, load_module
from covfuse.training.results import EVAL_SPLITS, scored_splits, summary, write_results
from covfuse.training.resume import Interruption
from covfuse.training.rundir import (
    RunFolder, check_name, check_resume_epochs, checkpoint_path, find_run, last_checkpoint, resume_hint, write_text,
)
from covfuse.training.tasks import task_of
from covfuse.training.trainer import (
    Hardware, build_trainer, check_hardware, global_rank, one_device_trainer, resolve_hardware,
)

log = logging.getLogger("covfuse.training")


# -- what a run is built from --------------------------------------------------------------
def covariate_values(data: CovfuseDataModule) -> dict[str, dict]:
    """What the training split showed of each encoded feature (``predict`` refuses values outside it): the
    range of a number's feature, however few distinct values it had (age 55..90 in a small cohort
    accepts 66), and the set of values of a 0/1 feature (binary columns, one-hot levels, missing
    indicators). A number is a set only when the user declares it categorical (data.categorical, BIDS Levels)."""
    real = data.covariates_real[data.indices["train"]]
    numeric = set()
    encoder = getattr(data, "encoder", None)
    if encoder is not None:
        numeric = {cols[0] for spec, cols, _ in encoder.layout() if spec["kind"] == "numeric"}
    out = {}
    for k, name in enumerate(data.covariate_names):
        values = np.unique(real[:, k])
        out[name] = ({"min": float(values.min()), "max": float(values.max())} if k in numeric or len(values) > 10
                     else {"values": [float(v) for v in values]})
    return out


def build_module(config: RunConfig, data: CovfuseDataModule, hw: Hardware) -> CovfuseModule:
    """The LightningModule of ``config`` for the data it trains on (covariate names, classes, target scale)."""
    task = task_of(config.model.head)
    model = dataclasses.asdict(config.model)
    classes = list(getattr(data, "classes", []) or [])
    if task.per_class:
        model["num_classes"] = len(classes)
    return CovfuseModule(
        model=model,
        covariates=data.covariate_names,
        target=data.target_name,
        preset=config.data.preset,
        image_size=config.data.image_size,
        optim=dataclasses.asdict(config.optim),
        channels_last=hw.channels_last,
        covariates_mode=config.data.covariates_mode,
        covariate_values=covariate_values(data),
        classes=classes or None,
        target_stats=data.target_stats() if task.standardised else None,
    )


def check_fill(config: RunConfig, data: CovfuseDataModule, world_size: int) -> None:
    """Every process needs at least one training batch and one sample of each evaluated split."""
    n_train = len(data.indices["train"])
    per_process = n_train // max(1, world_size)
    if per_process < min(config.data.batch_size, n_train) or per_process == 0:
        raise UserError(f"{world_size} process(es) x data.batch_size {config.data.batch_size} need at least "
                        f"{world_size * config.data.batch_size} training images, the train split has {n_train}: "
                        "use fewer --trainer.devices or a smaller --data.batch_size")
    for split in EVAL_SPLITS:
        if len(data.indices[split]) < world_size:
            raise UserError(f"the {split} split has {len(data.indices[split])} image(s), fewer than the "
                            f"{world_size} processes; use fewer --trainer.devices")


def _log_data(config: RunConfig, run_dir: Path, data: CovfuseDataModule) -> None:
    log.info("data %s: train/valid/test = %s; target %s, covariates %s (%s)", config.data.root,
             "/".join(str(len(data.indices[s])) for s in ("train", "valid", "test")),
             data.target_name, ", ".join(data.covariate_names) or "none", config.data.covariates_mode)
    if data.skipped:
        log.warning("skipped %d image(s) that do not decode (listed in %s): %s%s", len(data.skipped),
                    run_dir / "skipped.txt", ", ".join(data.skipped[:5]), " ..." if len(data.skipped) > 5 else "")
    if data.nonfinite[0]:
        files, voxels = data.nonfinite
        log.info("data.nonfinite zero: %d NaN/Inf voxel(s) in %d file(s) set to 0 before normalisation", voxels, files)
    for note in data.notes():  # encodings, decimal commas, merged spellings, EXIF turns, DICOM windows
        log.info("data: %s", note)


# -- covfuse fit -----------------------------------------------------------------------------
def fit_run(config: RunConfig, *, overwrite: bool = False, resume: bool = False,
            tracking: trackmod.Context | None = None, callbacks: Sequence[L.Callback] = (),
            splits: Sequence[str] = EVAL_SPLITS) -> Path:
    """Train one named run and evaluate its best checkpoint; returns the run folder.

    Everything that can be checked is checked before the folder is touched (config values, the
    data, the model, the trainer settings), so a failing command writes nothing. With
    ``overwrite`` the previous run is put aside and restored if this one fails before its first
    checkpoint. The folder is locked for the whole call. ``tracking`` places the run in a study for
    the trackers (:mod:`covfuse.training.tracking`); ``callbacks`` join the trainer's (a search's pruning);
    ``splits`` are the splits the best checkpoint is scored on (a search trial: valid only).
    """
    check_name(config.name)
    cfgmod.check(config)
    check_hardware(config.trainer)
    rank0 = global_rank() == 0
    with RunFolder(config.run_dir, overwrite=overwrite, resume=resume, rank0=rank0) as folder:
        run_dir, ckpt = folder.path, folder.checkpoint
        if rank0 and ckpt is not None:
            check_resume_epochs(ckpt, config.trainer.max_epochs)

        # 1. data, module and trainer, built and checked without writing into the folder
        L.seed_everything(config.seed, workers=True, verbose=False)
        hw = resolve_hardware(config.trainer)
        data = CovfuseDataModule(config.data, seed=config.seed, pin_memory=hw.gpu,
                                 state=read_state(run_dir) if ckpt is not None else None, head=config.model.head)
        if rank0:
            data.prepare_data()  # other ranks find the cache once it exists, or read the files meanwhile
        data.setup("fit")  # the module needs the covariate names
        module = build_module(config, data, hw)
        if config.trainer.compile:
            compile_model(module.model)
        interruption = Interruption(config.seed, last_checkpoint(run_dir), resume_hint(config))
        loggers = trackmod.make_loggers(config, run_dir, tracking, resume=ckpt is not None)
        steps = len(data.datasets["train"]) // config.data.batch_size // config.trainer.accumulate_grad_batches
        trainer = build_trainer(config, run_dir, hw, steps_per_epoch=steps, loggers=loggers,
                                extra_callbacks=[interruption, *trackmod.callbacks(loggers), *callbacks])
        check_fill(config, data, trainer.world_size)
        if task_of(config.model.head).reference:
            survival_run.check_times(config, data)  # the grid and tau inside the training follow-up

        # 2. the folder: created (or cleared, or the previous run put aside), config.yaml written
        if rank0:
            folder.create(config)
            if data.skipped:
                write_text(run_dir / "skipped.txt", "".join(f"{name}\n" for name in data.skipped))

        # 3. train, then score the best checkpoint and write the results
        with runlog.capture(run_dir / "log.txt", enabled=rank0):
            start = time.monotonic()
            log.info("run %s in %s%s", config.name, run_dir, f", resuming from {ckpt}" if ckpt else "")
            if rank0:  # the fitted covariate encoding and preprocessing, reused by test and predict
                write_text(run_dir / STATE_FILE, json.dumps(data.state(), indent=1) + "\n")
            _log_data(config, run_dir, data)
            if rank0:
                trackmod.start(trainer.loggers[1:], config, run_dir, tracking)
            interruption.install()
            try:
                trainer.fit(module, datamodule=data, ckpt_path=ckpt)
            finally:
                interruption.uninstall()
            fit_seconds = time.monotonic() - start
            best = trainer.checkpoint_callback.best_model_path or str(last_checkpoint(run_dir))
            module.eval_splits = scored_splits(config, splits)
            trainer.test(module, dataloaders=data.eval_dataloaders(tuple(module.eval_splits)), ckpt_path=best,
                         verbose=False)
            if rank0:
                extra = {"checkpoint": os.path.relpath(best, run_dir), **module.loaded_from,
                         "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                         "fit_seconds": round(fit_seconds, 2)}
                if data.skipped:
                    extra["skipped_images"] = len(data.skipped)
                metrics = write_results(run_dir, config, data, module.outputs, extra)
                trackmod.log_final(trainer.loggers[1:], metrics, run_dir, trainer.global_step, config, tracking)
                log.info("run %s done in %.1f s: %s", config.name, time.monotonic() - start, summary(run_dir))
    return run_dir


# -- covfuse test ----------------------------------------------------------------------------
def evaluate_run(run: str | Path, *, runs_dir: str | Path = "runs", which: str = "best",
                 splits: Sequence[str] = EVAL_SPLITS, accelerator: str = "auto", root: str | None = None) -> Path:
    """Evaluate a run's checkpoint on ``splits`` and rewrite its predictions.csv and metrics.json.

    Checks (checkpoint, data, covariates, accelerator) come first and the run is locked, so a
    failing call leaves the folder as it was.
    """
    run_dir = find_run(str(run), runs_dir)
    config = cfgmod.load(run_dir / "config.yaml")
    if root:
        config.data.root = root
    check_hardware(dataclasses.replace(config.trainer, accelerator=accelerator, devices=1))
    ckpt = checkpoint_path(run_dir, which)
    with RunLock(run_dir):
        start = time.monotonic()
        module = load_module(ckpt)
        data = CovfuseDataModule(config.data, seed=config.seed, state=read_state(run_dir), head=config.model.head)
        data.setup("test")
        if data.covariate_names != list(module.hparams.covariates):
            raise UserError(f"{ckpt} was trained with covariates {list(module.hparams.covariates)}, the run's config "
                            f"says {data.covariate_names}; give the checkpoint of this run")
        module.eval_splits = scored_splits(config, splits)
        hw = resolve_hardware(dataclasses.replace(config.trainer, accelerator=accelerator))
        trainer = one_device_trainer(accelerator, hw.precision, callbacks=[LineProgress(config.name)],
                                     deterministic=hw.deterministic)
        with runlog.capture(run_dir / "log.txt"):
            log.info("evaluating %s on %s", ckpt, ", ".join(splits))
            trainer.test(module, dataloaders=data.eval_dataloaders(tuple(module.eval_splits)), verbose=False)
            previous = {}
            if (run_dir / "metrics.json").is_file():
                previous = {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items()
                            if k in ("global_step", "epochs", "fit_seconds")}
            write_results(run_dir, config, data, module.outputs,
                          {"checkpoint": os.path.relpath(ckpt, run_dir), **module.loaded_from, **previous})
            plot_losses(run_dir / "metrics.csv", run_dir / "plots" / "loss.png", config.name)
            log.info("evaluated %s in %.1f s: %s", config.name, time.monotonic() - start, summary(run_dir))
    return run_dir
