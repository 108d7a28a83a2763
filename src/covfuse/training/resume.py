"""Interrupted runs that finish identically: resumable data order, seeded augmentation, signal checkpoints.

A resumed run equals an uninterrupted one (on CPU, fixed seed) because nothing random depends on
how the process got to a step:

* the training order of epoch ``e`` is a permutation seeded by ``(seed, e)`` (:class:`EpochSampler`);
  a checkpoint records how many batches of the epoch were consumed and the resumed run skips them
  (:class:`Interruption` keeps that position in its own checkpoint state and hands it to the
  :class:`ResumableLoader` when the epoch starts: Lightning's own loader-state restore is skipped
  when the data was set up before the checkpoint loaded, which ``estimated_stepping_batches`` in
  ``configure_optimizers`` (the cosine schedule) does);
* augmentation draws come from a generator seeded by the batch's own sample indices
  (:class:`SeededBatches`), not from the process-wide stream that loader start-up also draws from;
* the process-wide RNG (dropout) is re-seeded from ``(seed, global_step, batch index)`` before every step.

SIGINT/SIGTERM (Ctrl-C, ``scancel``, a cluster's pre-emption) set a flag; after the current
training batch :class:`Interruption` saves ``checkpoints/last.ckpt`` (mid-epoch) and stops with
:class:`RunInterrupted`, whose message says how to resume. A second Ctrl-C stops at once.
Checkpoints are written atomically with the user's umask and read with ``weights_only=True``.
"""
from __future__ import annotations

import signal
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Sampler

from covfuse.errors import RunInterrupted
from covfuse.io import atomic_path, load_trusted


def mix(*values: int) -> int:
    """A 63-bit seed from integers (crc32 of their bytes twice over: stable across runs and machines)."""
    data = np.asarray(values, dtype=np.int64).tobytes()
    return (zlib.crc32(data) << 31 | zlib.crc32(data[::-1])) & (2**63 - 1)


class EpochSampler(Sampler[int]):
    """A random order per epoch seeded by ``(seed, epoch)``, able to start ``skip`` samples into it."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch, self.skip = 0, 0
        self.trainer = None  # set by the data module: the epoch is read from it when iteration starts

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this before every epoch (but after a resumed
        self.epoch = epoch  # run's first iterator exists, hence ``trainer`` below)

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(mix(self.seed, epoch)))

    def __iter__(self) -> Iterator[int]:
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        skip, self.skip = self.skip, 0  # a skip applies once, to the epoch being resumed
        yield from self.order(self.epoch)[skip:].tolist()

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` that can start an epoch ``consumed`` batches in.

    ``consumed`` is set by :class:`Interruption` after each training batch: the loader itself runs
    ahead of training (prefetching), so its own count would skip batches that never trained.
    (Deliberately no ``state_dict``: :class:`Interruption` checkpoints the position, see the module doc.)
    """

    consumed: int = 0

    def resume_at(self, state: dict[str, int]) -> None:
        consumed = int(state["consumed"])
        if consumed >= len(self):  # saved at the end of an epoch: the next one starts from its beginning
            consumed = 0
        self.sampler.skip = consumed * int(self.batch_size)
        self.consumed = consumed


class SeededBatches(Dataset):
    """Wraps a training dataset so the random draws of one batch (flips) depend only on its sample indices."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, items: list[int]) -> list:
        getitems = getattr(self.dataset, "__getitems__", None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(self.seed, *items))
            return getitems(items) if getitems is not None else [self.dataset[i] for i in items]

    def __repr__(self) -> str:
        return f"SeededBatches({self.dataset!r})"


class Interruption(Callback):
    """Seed each step, keep the loader's consumed count, and turn SIGINT/SIGTERM into a checkpoint and a stop."""

    def __init__(self, seed: int, last: Path, resume_hint: str):
        self.seed, self.last, self.resume_hint = seed, Path(last), resume_hint
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._position: dict[str, int] = {}  # the training loader's position, saved with each checkpoint
        self._resume: dict[str, int] | None = None  # a loaded position, applied when its epoch starts

    # -- checkpoint state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return dict(self._position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state) if state else None

    def on_train_start(self, trainer, pl_module) -> None:
        """Start the resumed epoch where the checkpoint left it: after the data is set up, before the
        first batch is drawn (``on_train_epoch_start`` is not called for an epoch restarted mid-way)."""
        loader = trainer.train_dataloader
        if self._resume is not None and isinstance(loader, ResumableLoader):
            if int(self._resume.get("epoch", -1)) == trainer.current_epoch:
                loader.resume_at(self._resume)
        self._resume = None

    # -- signals -------------------------------------------------------------------------
    def install(self) -> None:
        """Catch SIGINT and SIGTERM (call before ``trainer.fit``; Lightning chains its SIGTERM handler to ours)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.received = signum
        name = signal.Signals(signum).name
        print(f"\n{name} received: saving a checkpoint after this batch (Ctrl-C again to stop at once)", flush=True)

    # -- hooks ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(mix(self.seed, trainer.global_step, batch_idx))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.consumed = batch_idx + 1
            self._position = {"epoch": trainer.current_epoch, "consumed": loader.consumed}
        received = self.received is not None
        if trainer.world_size > 1:  # one process's signal stops them all, at the same batch
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        signum = self.received or signal.SIGTERM
        # Every process checkpoints collectively (save_checkpoint is a collective call), rank 0 writes.
        trainer.save_checkpoint(self.last)
        code = 128 + int(signum)
        raise RunInterrupted(
            f"interrupted by {signal.Signals(signum).name} in epoch {trainer.current_epoch + 1}, "
            f"after step {trainer.global_step}; saved {self.last}; continue with: {self.resume_hint}", code)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary name (whole or absent, user's umask) and read with weights_only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_trusted(path, what="checkpoint", map_location=map_location or "cpu")
