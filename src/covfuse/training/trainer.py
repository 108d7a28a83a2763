"""The Lightning Trainer: hardware settings and checks, the run's metrics.csv logger, Lightning's
messages quietened, and the trainers that fit a run and that evaluate or predict on one device.

Devices, nodes and strategy go straight to ``lightning.Trainer``.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.precision import HalfPrecision
from lightning_utilities import apply_to_collection
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from covfuse.errors import UserError
from covfuse.training.callbacks import trainer_callbacks
from covfuse.training.config import RunConfig, TrainerConfig
from covfuse.training.resume import AtomicCheckpointIO
from covfuse.training.rundir import CHECKPOINTS
from covfuse.training.tasks import task_of


# -- hardware ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    """Trainer settings that depend on the machine, with the "None: choose for me" defaults resolved."""

    gpu: bool
    precision: str
    channels_last: bool
    deterministic: bool | str


def resolve_hardware(t: TrainerConfig) -> Hardware:
    """The machine-dependent settings of ``t`` for this machine."""
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


def global_rank() -> int:
    """This process's global rank, known before the Trainer exists (from RANK / SLURM_PROCID / ...)."""
    return int(getattr(rank_zero_only, "rank", 0) or 0)


# -- loggers and Lightning's messages ------------------------------------------------------
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


# -- precision -----------------------------------------------------------------------------
class HalfKeepingFloat64(HalfPrecision):
    """Lightning's ``bf16-true`` / ``16-true``, except that a batch's float64 tensors stay float64: Lightning
    casts every floating-point input to the half type, which would round survival times (bf16 keeps 3
    significant digits: 1000 and 1001 become one time, and the Cox risk sets change). Images and
    covariates are float32 or lower and are cast as before."""

    def convert_input(self, data: Any) -> Any:
        dtype = self._desired_input_dtype
        return apply_to_collection(data, Tensor, lambda t: t if t.dtype == torch.float64 or not t.is_floating_point()
                                   else t.to(dtype))


def precision_args(precision: str, strategy: Any = "auto") -> tuple[str | None, list]:
    """(the Trainer's ``precision``, precision plugins): :class:`HalfKeepingFloat64` for the true half
    precisions on the strategies whose precision plugin is Lightning's plain one, else ``precision`` as given."""
    if precision in ("bf16-true", "16-true") and str(strategy).split("_")[0] in ("auto", "ddp", "single", "dp"):
        return None, [HalfKeepingFloat64(precision)]
    return precision, []


# -- trainers ------------------------------------------------------------------------------
def build_trainer(config: RunConfig, run_dir: Path, hw: Hardware, steps_per_epoch: int | None = None,
                  extra_callbacks: Sequence[L.Callback] = (), loggers: Sequence = ()) -> L.Trainer:
    """The Trainer that fits a run into ``run_dir``: checkpoints/best.ckpt by ``config.monitor``, last.ckpt
    every epoch, metrics.csv plus ``loggers``; callbacks ``extra_callbacks`` first, then the checkpoints, then
    every run's (:func:`covfuse.training.callbacks.trainer_callbacks`)."""
    t = config.trainer
    quiet_lightning()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINTS,
        filename="best",
        monitor=config.monitor,
        mode=task_of(config.model.head).monitors[config.monitor],
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # Lightning 2.6's save_last writes last.ckpt only in epochs that also improved best.ckpt, so a
    # resume could go back several epochs; a second, unmonitored checkpoint is written every epoch.
    last = ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                           every_n_epochs=1, auto_insert_metric_name=False, enable_version_counter=False)
    precision, plugins = precision_args(hw.precision, t.strategy)
    optional = {k: v for k, v in {"limit_train_batches": t.limit_train_batches,
                                  "limit_val_batches": t.limit_val_batches}.items() if v is not None}
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            max_epochs=t.max_epochs,
            max_steps=t.max_steps,
            gradient_clip_val=t.gradient_clip_val,
            accumulate_grad_batches=t.accumulate_grad_batches,
            deterministic=hw.deterministic,
            log_every_n_steps=max(1, min(t.log_every_n_steps, steps_per_epoch or t.log_every_n_steps)),
            val_check_interval=t.val_check_interval,
            logger=[RunCSVLogger(run_dir), *loggers],
            callbacks=[*extra_callbacks, checkpoint, last, *trainer_callbacks(config.name, run_dir, t.progress, t.progress_every)],
            precision=precision,
            plugins=[AtomicCheckpointIO(), *plugins],
            enable_progress_bar=t.progress == "bar",
            enable_model_summary=t.summary,
            **optional,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as exc:  # Lightning's answer to impossible settings
        raise UserError(f"trainer settings: {' '.join(str(exc).split())[:300]}") from None


def one_device_trainer(accelerator: str, precision: str, *, callbacks: Sequence[L.Callback] = (),
                       deterministic: bool | str | None = None) -> L.Trainer:
    """A Trainer for ``covfuse test`` and ``covfuse predict``: one device, no logger, no checkpoints, no bar."""
    quiet_lightning()
    precision, plugins = precision_args(precision)
    return L.Trainer(accelerator=accelerator, devices=1, precision=precision, plugins=plugins, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=list(callbacks), deterministic=deterministic)
