"""Callbacks of every run: line-based progress (readable in log files and SLURM output), a stop at the first
NaN/Inf loss, and the loss plot."""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from covfuse.errors import RunDiverged
from covfuse.training.curves import plot_losses


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


class LineProgress(Callback):
    """Print one line every ``every`` seconds during training and one per validation: no carriage returns."""

    def __init__(self, name: str, every: float = 10.0):
        self.name, self.every = name, every
        self._last = self._epoch_start = self._fit_start = 0.0
        self._seen = 0

    def _say(self, text: str) -> None:
        rank_zero_only(print)(f"[{self.name}] {text}", flush=True)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.monotonic()
        self._say(f"training: {trainer.num_devices} {trainer.accelerator.__class__.__name__.replace('Accelerator', '')} "
                  f"device(s) x {trainer.num_nodes} node(s), precision {trainer.precision}, max_epochs {trainer.max_epochs}")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last = time.monotonic()
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += len(batch["target"])
        now = time.monotonic()
        total = trainer.num_training_batches
        last = isinstance(total, int) and batch_idx + 1 >= total
        if now - self._last < self.every and not last:
            return
        self._last = now
        elapsed = now - self._epoch_start
        done = batch_idx + 1
        loss = _value(trainer.callback_metrics, "train/loss_step")
        eta = elapsed / done * (total - done) if isinstance(total, int) and math.isfinite(total) else float("nan")
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                 f"step {done}/{total}" if isinstance(total, int) else f"step {done}",
                 f"loss {loss:.4f}" if loss is not None else "",
                 f"{self._seen / max(elapsed, 1e-9):.0f} img/s",
                 f"eta {_clock(eta)}" if math.isfinite(eta) else ""]
        self._say(" | ".join(p for p in parts if p))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        loss, acc, mae = _value(m, "val/loss"), _value(m, "val/acc"), _value(m, "val/mae")
        c_index = _value(m, "val/c_index")
        # Validation at the end of an epoch runs before the epoch's train loss is reduced, so the
        # train loss has its own line (on_train_epoch_end) rather than showing the previous epoch's here.
        text = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} validated"
        if loss is not None:
            text += f" | val loss {loss:.4f}"
        if acc is not None:
            text += f" | val acc {acc:.4f}"
        if mae is not None:
            text += f" | val mae {mae:.4g}"
        if c_index is not None:
            text += f" | val c-index {c_index:.4f}"
        self._say(text + f" | {_clock(time.monotonic() - self._fit_start)} elapsed")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        train = _value(trainer.callback_metrics, "train/loss_epoch")
        if train is not None:
            self._say(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} trained | train loss {train:.4f} "
                      f"(mean over the epoch) | {_clock(time.monotonic() - self._fit_start)} elapsed")

    def on_test_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.monotonic()
        splits = getattr(pl_module, "eval_splits", ["test"])
        self._say(f"evaluating on {', '.join(splits)}")

    def on_test_end(self, trainer, pl_module) -> None:
        self._say(f"evaluated in {_clock(time.monotonic() - self._epoch_start)}")


class StopNonFinite(Callback):
    """Stop the run at the first NaN/Inf training loss (after the batch) or validation loss (before that
    epoch's checkpoints are written: Lightning runs checkpoint callbacks last), so the last good checkpoint
    stays and nothing is predicted with NaN weights: :class:`~covfuse.errors.RunDiverged`, one line, exit 1."""

    def __init__(self, last: Path):
        self.last = Path(last)

    def _stop(self, trainer, what: str, value: float) -> None:
        kept = (f"the last good checkpoint is {self.last} (epoch {trainer.current_epoch})" if self.last.is_file()
                else "no checkpoint had been written yet")
        raise RunDiverged(
            f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}: {what} became {value}; stopped, {kept}. "
            "Check the inputs for NaN/Inf (`covfuse data info ROOT`, data.nonfinite), then lower optim.lr or set "
            "trainer.gradient_clip_val")

    def _bad(self, trainer, value: float | None) -> bool:
        bad = value is not None and not math.isfinite(value)
        if trainer.world_size > 1:  # every process stops at the same batch
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = None if loss is None else float(loss.detach().float().cpu())
        if self._bad(trainer, value):
            self._stop(trainer, "the training loss", value)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # val/loss only: a score such as AUROC may be undefined on a one-class split without anything diverging
        value = _value(trainer.callback_metrics, "val/loss")
        if self._bad(trainer, value):
            self._stop(trainer, "the validation loss", value)


class LossPlot(Callback):
    """Write ``plots/loss.png`` from metrics.csv when training ends."""

    def __init__(self, run_dir: str | Path, title: str = ""):
        self.run_dir, self.title = Path(run_dir), title

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.logger is not None:
            trainer.logger.save()
        plot_losses(self.run_dir / "metrics.csv", self.run_dir / "plots" / "loss.png", self.title)


def trainer_callbacks(name: str, run_dir: Path, progress: str, every: float) -> list[L.Callback]:
    """The callbacks every run gets besides checkpointing."""
    callbacks: list[L.Callback] = [StopNonFinite(run_dir / "checkpoints" / "last.ckpt"), LossPlot(run_dir, title=name)]
    if progress == "lines":
        callbacks.append(LineProgress(name, every))
    return callbacks
