"""One named run end to end: run folder, Trainer, fit, evaluation of the best checkpoint, files.

``fit_run(config)`` writes ``<runs_dir>/<name>/``: config.yaml, log.txt, metrics.csv,
checkpoints/{best,last}.ckpt, plots/loss.png, then predictions.csv and metrics.json from the
best checkpoint on valid and test. ``evaluate_run(run_dir)`` redoes the last two (``covfuse test``).
Devices, nodes and strategy go straight to ``lightning.Trainer``; in a distributed run every
process runs this function and only global rank 0 touches the folder.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from covfuse.errors import UserError
from covfuse.io import atomic_write_text, load_trusted
from covfuse.training import config as cfgmod
from covfuse.training import runlog
from covfuse.training import tracking as trackmod
from covfuse.training.callbacks import LineProgress, plot_losses, trainer_callbacks
from covfuse.training.config import RunConfig, TrainerConfig
from covfuse.training.datamodule import CovfuseDataModule
from covfuse.training.lock import LOCK_NAME, RunLock
from covfuse.training.metrics import PRIMARY, log_loss, split_metrics, task_of_head
from covfuse.training.module import CovfuseModule, compile_model
from covfuse.training.resume import AtomicCheckpointIO, Interruption
from covfuse.training.datamodule import STATE_FILE, read_state

log = logging.getLogger("covfuse.training")

CHECKPOINTS = "checkpoints"
EVAL_SPLITS = ("valid", "test")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")


# -- hardware ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """Trainer settings that depend on the machine, with the "None: choose for me" defaults resolved."""

    gpu: bool
    precision: str
    channels_last: bool
    deterministic: bool | str


def resolve_hardware(t: TrainerConfig) -> Hardware:
    gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    if t.precision is not None:
        precision = t.precision
    elif gpu:
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    else:
        precision = "32-true"  # bf16 autocast on CPU is opt-in: 15% slower on the 2-core dev machine (docs/performance.md)
    channels_last = gpu if t.channels_last is None else t.channels_last
    # GPU: VGG's adaptive pooling backward has no deterministic CUDA kernel, so "warn" rather than raise.
    deterministic = ("warn" if gpu else True) if t.deterministic is None else t.deterministic
    return Hardware(gpu, precision, channels_last, deterministic)


def global_rank() -> int:
    """This process's global rank, known before the Trainer exists (from RANK / SLURM_PROCID / ...)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


# -- run folder ----------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."}:
        raise UserError(f"run name {name!r} must be a plain folder name (letters, digits, . _ = + , -; no / or \\)")
    return name


def _occupied(run_dir: Path) -> bool:
    return run_dir.exists() and (not run_dir.is_dir() or any(p.name != LOCK_NAME for p in run_dir.iterdir()))


def open_run_dir(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> tuple[RunLock | None, Path | None]:
    """Check (and lock) an existing run folder before anything is written; returns the lock and the checkpoint
    to resume from (None: start from the beginning)."""
    if resume and overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir}: no run to resume (no config.yaml there); start it without --resume")
        lock = RunLock(run_dir)
        last = run_dir / CHECKPOINTS / "last.ckpt"
        return lock, (last if last.is_file() else None)
    if _occupied(run_dir):
        if not overwrite:
            raise UserError(f"{run_dir} already exists; pass --overwrite to replace it, --resume to continue it, "
                            "or choose another --name")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{run_dir} is not a covfuse run folder (no config.yaml); refusing to delete it")
        return RunLock(run_dir), None
    return None, None


def check_resume_epochs(ckpt: Path, max_epochs: int) -> None:
    """Refuse a --resume whose max_epochs is already behind the checkpoint, as Lightning would, but
    before config.yaml is rewritten (Lightning finds out only once training starts)."""
    state = load_trusted(ckpt, what="checkpoint", mmap=True)  # counters only: tensors stay on disk
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epoch = int(progress.get("completed", state.get("epoch", 0)))
    if max_epochs not in (-1, None) and epoch > max_epochs:
        raise UserError(f"--resume: {ckpt} has trained {epoch} epoch(s) already, more than trainer.max_epochs "
                        f"{max_epochs}; pass --trainer.max_epochs {epoch} or more")


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False, resume: bool = False) -> Path | None:
    """Check, then create or clear the run folder at once (for callers that validated their inputs already)."""
    lock, ckpt = open_run_dir(run_dir, overwrite=overwrite, resume=resume)
    lock, backup = commit_run_dir(run_dir, lock, overwrite=overwrite, resume=resume, ckpt=ckpt)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    if lock is not None:
        lock.release()
    return ckpt


def commit_run_dir(run_dir: Path, lock: RunLock | None, *, overwrite: bool, resume: bool,
                   ckpt: Path | None) -> tuple[RunLock, Path | None]:
    """Make the folder the run writes into, once every check has passed; returns its lock and, for
    --overwrite, where the previous run waits (restored if this one fails before its first checkpoint)."""
    backup = None
    if resume:
        if ckpt is None:  # stopped before its first checkpoint: start again, keeping log.txt and config.yaml
            for p in run_dir.iterdir():
                if p.name not in (LOCK_NAME, "log.txt", "config.yaml"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        return lock, None
    if lock is not None and overwrite:
        backup = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
        os.replace(run_dir, backup)  # the old lock travels with the folder and is held until the new one is
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    new = RunLock(run_dir)
    if lock is not None:
        lock.release()
    return new, backup


def write_text(path: Path, text: str) -> None:
    """Write via a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing metrics.csv is continued (``--resume``), not deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)


class RunCSVLogger(CSVLogger):
    """CSVLogger writing ``<run_dir>/metrics.csv`` itself (no name/version subfolders, no hparams.yaml)."""

    def __init__(self, run_dir: str | Path, flush_logs_every_n_steps: int = 50):
        super().__init__(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _ResumingWriter(log_dir=self.save_dir)
        return self._experiment

    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        """The resolved config.yaml already records them."""


# -- fit -----------------------------------------------------------------------------------
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
    model = dataclasses.asdict(config.model)
    classes = list(getattr(data, "classes", []) or [])
    if config.model.head == "multiclass":
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
        target_stats=data.target_stats() if config.model.head == "regression" else None,
    )


_NOISE = (
    "\U0001f4a1 Tip",  # advertising
    "was configured so validation will run",  # the default
    "to estimate number of stepping batches",  # the cosine schedule asks for it
    "`Trainer.fit` stopped: `max_epochs",  # the normal end
    "GPU available:", "TPU available:", "HPU available:", "IPU available:",  # the hardware banner
    "`weights_only` was not set",  # our CheckpointIO always loads with weights_only=True
    "Restoring states from the checkpoint path at", "Loaded model weights from the checkpoint at",  # every evaluation
)


class _DropNoise(logging.Filter):
    """Drop Lightning's messages that say nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(part in message for part in _NOISE)


_NOISY_WARNINGS = (
    r"The number of training batches .* is smaller than the logging interval",  # tiny runs; we log per epoch too
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning 2.6 against torch >= 2.9, harmless
    r"Checkpoint directory .* exists and is not empty",  # --resume writes into its own checkpoints/
    r"Using `DistributedSampler` with the dataloaders. During `trainer.test\(\)`",  # we drop the padded repeats
    r"torch.distributed.nn.functional.all_gather is deprecated",  # inside Lightning's all_gather
    r"You're resuming from a checkpoint that ended before the epoch ended",  # DDP resumes restart the epoch's order
    r"The `srun` command is available on your system but is not used",  # a login node or a local run; array tasks use srun
)


def quiet_lightning() -> None:
    """Silence messages that say nothing about the run (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):  # its weights_only notice on save
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def check_hardware(t: TrainerConfig) -> None:
    """Refuse an accelerator or device count this machine does not have, before Lightning prints tracebacks."""
    accel = str(t.accelerator).lower()
    if accel in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"--trainer.accelerator {t.accelerator}: this machine has no usable GPU "
                        "(torch.cuda.is_available() is False); use --trainer.accelerator cpu or auto")
    gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    if isinstance(t.devices, int) and not isinstance(t.devices, bool):
        have = torch.cuda.device_count() if gpu else (os.cpu_count() or 1)
        kind = "GPU(s)" if gpu else "CPU cores"
        if t.devices < 1 and t.devices != -1:
            raise UserError(f"--trainer.devices must be at least 1 (or auto), got {t.devices}")
        if t.devices > have:
            raise UserError(f"--trainer.devices {t.devices}: this machine has {have} {kind}; "
                            f"use --trainer.devices {have} or fewer (or auto)")


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


def build_trainer(config: RunConfig, run_dir: Path, hw: Hardware, steps_per_epoch: int | None = None,
                  extra_callbacks: Sequence[L.Callback] = (), loggers: Sequence = ()) -> L.Trainer:
    t = config.trainer
    quiet_lightning()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINTS,
        filename="best",
        monitor=config.monitor,
        mode="min" if config.monitor.endswith(("loss", "mae", "ibs")) else "max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Lightning 2.6's save_last writes last.ckpt only in epochs that also improved best.ckpt, so a
    # resume could go back several epochs; a second, unmonitored checkpoint is written every epoch.
    last = ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=1, auto_insert_metric_name=False, enable_version_counter=False)
    optional = {k: v for k, v in {"limit_train_batches": t.limit_train_batches,
                                  "limit_val_batches": t.limit_val_batches}.items() if v is not None}
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=hw.precision,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            gradient_clip_val=t.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches,
            deterministic=hw.deterministic,
            log_every_n_steps=max(1, min(t.log_every_n_steps, steps_per_epoch or t.log_every_n_steps)),
            val_check_interval=t.val_check_interval,
            logger=[RunCSVLogger(run_dir), *loggers],
            callbacks=[*extra_callbacks, checkpoint, last, *trainer_callbacks(config.name, run_dir, t.progress, t.progress_every)],
            plugins=[AtomicCheckpointIO()],
            enable_progress_bar=t.progress == "bar",
            enable_model_summary=t.summary,
            **optional,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:  # Lightning's answer to impossible settings
        raise UserError(f"trainer settings: {' '.join(str(exc).split())[:300]}") from None


def recorded(config: RunConfig) -> RunConfig:
    """The config as the run folder keeps it: data.root absolute, so test, explain and report work from
    any directory (data_state.json keeps it as given, with the table's fingerprint)."""
    if not config.data.root:
        return config
    data = dataclasses.replace(config.data, root=os.path.abspath(config.data.root))
    return dataclasses.replace(config, data=data)


def resume_hint(config: RunConfig) -> str:
    where = "" if config.runs_dir == "runs" else f" --runs_dir {shlex.quote(str(config.runs_dir))}"
    return f"covfuse fit --name {shlex.quote(config.name)}{where} --resume"


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
    run_dir = config.run_dir
    rank0 = global_rank() == 0
    lock = backup = None
    ckpt_path = None
    if rank0:
        lock, ckpt_path = open_run_dir(run_dir, overwrite=overwrite, resume=resume)
    elif resume and (run_dir / CHECKPOINTS / "last.ckpt").is_file():
        ckpt_path = run_dir / CHECKPOINTS / "last.ckpt"
    if rank0 and ckpt_path is not None:
        check_resume_epochs(ckpt_path, config.trainer.max_epochs)
    created = False
    try:
        prepared = _prepare(config, run_dir, rank0, resume=ckpt_path is not None, tracking=tracking, callbacks=callbacks)
        if rank0:
            created = not resume
            lock, backup = commit_run_dir(run_dir, lock, overwrite=overwrite, resume=resume, ckpt=ckpt_path)
            write_text(run_dir / "config.yaml", cfgmod.dump(recorded(config)))
            if prepared.data.skipped:
                write_text(run_dir / "skipped.txt", "".join(f"{name}\n" for name in prepared.data.skipped))
        with runlog.capture(run_dir / "log.txt", enabled=rank0):
            _fit(config, run_dir, ckpt_path, rank0, prepared, tuple(splits), tracking)
    except Exception:
        if rank0 and created and not (run_dir / CHECKPOINTS).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            if backup is not None:
                os.replace(backup, run_dir)
                backup = None
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        if lock is not None:
            lock.release()
    return run_dir


@dataclass
class _Prepared:
    hw: Hardware
    data: CovfuseDataModule
    module: CovfuseModule
    trainer: L.Trainer
    interruption: Interruption


def _prepare(config: RunConfig, run_dir: Path, rank0: bool, resume: bool = False,
             tracking: trackmod.Context | None = None, callbacks: Sequence[L.Callback] = ()) -> _Prepared:
    """Data, module and trainer, built and checked without writing into the run folder."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    hw = resolve_hardware(config.trainer)
    data = CovfuseDataModule(config.data, seed=config.seed, pin_memory=hw.gpu,
                             state=read_state(run_dir) if resume else None, head=config.model.head)
    if rank0:
        data.prepare_data()  # other ranks find the cache once it exists, or read the JPEGs meanwhile
    data.setup("fit")  # the module needs the covariate names
    module = build_module(config, data, hw)
    if config.trainer.compile:
        compile_model(module.model)
    steps = len(data.datasets["train"]) // config.data.batch_size // config.trainer.accumulate_grad_batches
    interruption = Interruption(config.seed, run_dir / CHECKPOINTS / "last.ckpt", resume_hint(config))
    loggers = trackmod.make_loggers(config, run_dir, tracking, resume=resume)
    trainer = build_trainer(config, run_dir, hw, steps_per_epoch=steps,
                            extra_callbacks=[interruption, *trackmod.callbacks(loggers), *callbacks], loggers=loggers)
    check_fill(config, data, trainer.world_size)
    return _Prepared(hw, data, module, trainer, interruption)


def _fit(config: RunConfig, run_dir: Path, ckpt_path: Path | None, rank0: bool, p: _Prepared,
         splits: tuple[str, ...] = EVAL_SPLITS, tracking: trackmod.Context | None = None) -> None:
    start = time.monotonic()
    data, module, trainer = p.data, p.module, p.trainer
    log.info("run %s in %s%s", config.name, run_dir, f", resuming from {ckpt_path}" if ckpt_path else "")
    if rank0 and hasattr(data, "state"):  # volumes: the training-split covariate statistics, reused by test
        write_text(run_dir / STATE_FILE, json.dumps(data.state(), indent=1) + "\n")
    log.info("data %s: train/valid/test = %s; target %s, covariates %s (%s)", config.data.root,
             "/".join(str(len(data.indices[s])) for s in ("train", "valid", "test")),
             data.target_name, ", ".join(data.covariate_names) or "none", config.data.covariates_mode)
    if data.skipped:
        log.warning("skipped %d image(s) that do not decode (listed in %s): %s%s", len(data.skipped),
                    run_dir / "skipped.txt", ", ".join(data.skipped[:5]), " ..." if len(data.skipped) > 5 else "")
    if getattr(data, "nonfinite", (0, 0))[0]:
        files, voxels = data.nonfinite
        log.info("data.nonfinite zero: %d NaN/Inf voxel(s) in %d file(s) set to 0 before normalisation", voxels, files)
    if rank0:
        trackmod.start(trainer.loggers[1:], config, run_dir, tracking)
    p.interruption.install()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    finally:
        p.interruption.uninstall()
    fit_seconds = time.monotonic() - start
    best = trainer.checkpoint_callback.best_model_path or str(run_dir / CHECKPOINTS / "last.ckpt")
    module.eval_splits = scored_splits(config, splits)
    trainer.test(module, dataloaders=data.eval_dataloaders(tuple(module.eval_splits)), ckpt_path=best, verbose=False)
    if rank0:
        extra = {"checkpoint": os.path.relpath(best, run_dir), **module.loaded_from,
                 "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                 "fit_seconds": round(fit_seconds, 2)}
        if data.skipped:
            extra["skipped_images"] = len(data.skipped)
        metrics = write_results(run_dir, config, data, module.outputs, extra)
        trackmod.log_final(trainer.loggers[1:], metrics, run_dir, trainer.global_step, config, tracking)
        log.info("run %s done in %.1f s: %s", config.name, time.monotonic() - start, summary(run_dir))


# -- evaluation ----------------------------------------------------------------------------
def scored_splits(config: RunConfig, splits: Sequence[str]) -> list[str]:
    """The splits the best checkpoint scores: ``splits``, and for a survival head also the training
    split without augmentation (its risks give the Breslow baseline, :mod:`covfuse.training.survival_run`)."""
    from covfuse.training.datamodule import TRAIN_EVAL

    return [*splits, TRAIN_EVAL] if config.model.head == "survival" else list(splits)


def write_results(run_dir: Path, config: RunConfig, data: CovfuseDataModule,
                  outputs: dict[str, dict[str, torch.Tensor]], extra: dict | None = None) -> dict:
    """predictions.csv and metrics.json from the per-sample outputs of valid and test.

    predictions.csv has ``label`` and, for binary heads, ``probability`` (P(target = 1)); for a
    multi-class head ``prediction`` (the argmax class index; names in metrics.json ``classes``) and
    one ``probability_<class>`` column per class; for regression ``prediction`` in target units; for
    survival ``time``, ``event`` and ``risk`` (higher = earlier event) in place of ``label`` (**contract**).
    A survival run also writes survival_baseline.json, survival.csv and the plots of
    :mod:`covfuse.training.survival_run`, and scores every split against the training split's reference.
    """
    task = task_of_head(config.model.head)
    reference = None
    if task == "survival":
        from covfuse.training import survival_run

        outputs = dict(outputs)
        reference = survival_run.reference(config, data, outputs)
    classes = list(getattr(data, "classes", []) or [])
    columns = {"binary": ["probability"], "multiclass": ["prediction", *(f"probability_{c}" for c in classes)],
               "regression": ["prediction"], "survival": ["risk"]}[task]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    label_columns = ["time", "event"] if task == "survival" else ["label"]
    writer.writerow(["id", "group", "split", *label_columns, *columns, *data.covariate_names])
    metrics: dict[str, Any] = {
        "run": config.name,
        "task": task,
        "target": data.target_name,
        **({"classes": classes} if task == "multiclass" else {}),
        **({"event": config.data.event} if task == "survival" else {}),
        "covariates": data.covariate_names,
        "covariates_mode": config.data.covariates_mode,
        **(extra or {}),
    }
    for split, out in outputs.items():
        index = out["index"].numpy().astype(np.int64)
        value = out["output"].numpy().astype(np.float64)
        bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
        if bad.any():  # never a predictions.csv with NaN (a checkpoint whose weights diverged)
            from covfuse.errors import RunDiverged

            raise RunDiverged(f"the model's output is NaN/Inf for {int(bad.sum())} of {len(value)} {split} sample(s) "
                              f"(first: {data.filenames(index[bad][:1])[0]}); nothing written. Check the inputs for "
                              "NaN/Inf (`covfuse data info ROOT`, data.nonfinite) and the checkpoint (--ckpt last|best)")
        label = data.labels[index].astype(np.float64 if task in ("regression", "survival") else np.int64)
        real = data.covariates_real[index]
        clusters = data.groups(index)  # identity / subject: intervals resample people, not images
        if task == "binary":
            cells = [[f"{p:.6f}"] for p in value]
        elif task == "multiclass":
            cells = [[str(int(p.argmax())), *(f"{q:.6f}" for q in p)] for p in value]
        elif task == "survival":  # 9 digits give a float32 back exactly: lifelines on this file gives metrics.json's C
            cells = [[f"{p:.9g}"] for p in value]
        else:
            cells = [[f"{p:.6g}"] for p in value]
        for name, group, y, cell, covs in zip(data.filenames(index), clusters, label, cells, real):
            ys = ([f"{y[0]:.12g}", int(y[1])] if task == "survival" else
                  [f"{y:.6g}" if task == "regression" else int(y)])
            writer.writerow([name, group, split, *ys, *cell, *(f"{v:g}" for v in covs)])
        subgroups = data.covariate_groups(index)  # in the table's units: age bins, levels, "missing"
        loss = None if task in ("regression", "survival") else log_loss(label, value)
        metrics[split] = split_metrics(label, value, subgroups, loss=loss,
                                       clusters=clusters if config.bootstrap_unit == "group" else None,
                                       n_boot=config.bootstrap, seed=config.seed, task=task, reference=reference)
    if reference is not None:
        metrics["survival"] = {"eval_times": reference.grid, "tau": reference.tau, **reference.sources}
        reference.save(run_dir)
        write_text(run_dir / "survival.csv", survival_run.survival_table(reference, data, outputs))
        survival_run.figures(run_dir, reference, data, outputs)
    write_text(run_dir / "predictions.csv", table.getvalue())
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def summary(run_dir: Path) -> str:
    """One line: the task's primary score with CI per split (and AUROC for binary runs), from metrics.json."""
    m = json.loads((run_dir / "metrics.json").read_text())
    name = PRIMARY[m.get("task", "binary")]
    parts = []
    for split in EVAL_SPLITS:
        if split in m:
            s = m[split]
            lo, hi = s[f"{name}_ci"]
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
            auroc = f", auroc {s['auroc']:.3f}" if s.get("auroc") is not None else ""
            parts.append(f"{split} {name.replace('_', ' ')} {s[name]:.3f}{ci}{auroc}")
    return "; ".join(parts)


def find_run(run: str, runs_dir: str | Path = "runs") -> Path:
    """A run folder from a name (under runs_dir) or a path."""
    for candidate in (Path(run), Path(runs_dir) / run):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(f"no run {run!r}: neither {run}/config.yaml nor {Path(runs_dir) / run}/config.yaml exists")


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    path = run_dir / CHECKPOINTS / f"{which}.ckpt" if which in ("best", "last") else Path(which)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (has the run finished an epoch?)")
    return path


def load_module(path: Path, map_location: str | torch.device = "cpu") -> CovfuseModule:
    """Rebuild the module from a checkpoint's hyper-parameters and load its weights.

    The file is read with ``weights_only=True`` (:func:`covfuse.io.load_trusted`): a checkpoint
    carrying pickled objects is refused before anything in it runs. The model is built with
    ``weights=None``: the checkpoint holds the trained weights, and the ImageNet file the run may
    have started from need not exist on this machine.
    """
    ckpt = load_trusted(path, what="checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not a covfuse checkpoint (no hyper_parameters/state_dict); give a run's "
                        "checkpoints/best.ckpt or last.ckpt")
    try:
        hparams = dict(ckpt["hyper_parameters"])
        hparams["model"] = {**hparams["model"], "weights": None}
        module = CovfuseModule(**hparams)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a covfuse checkpoint ({' '.join(str(exc).split())[:160]})") from None
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"{path}: its weights do not fit the model its hyper-parameters describe ({first}); "
                        "the file was edited or comes from another model") from None
    module.on_load_checkpoint(ckpt)
    return module


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
        quiet_lightning()
        trainer = L.Trainer(accelerator=accelerator, devices=1, precision=hw.precision, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[LineProgress(config.name)], deterministic=hw.deterministic)
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
