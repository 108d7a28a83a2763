"""The run folder ``<runs_dir>/<name>/``: its name, its life while a run is fitted (checks and lock,
creation, the previous run kept aside under --overwrite), resume hints and checkpoint paths.

Only global rank 0 of a distributed run touches the folder; the other processes only learn which
checkpoint to resume from.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
from pathlib import Path

from covfuse.errors import UserError
from covfuse.io import atomic_write_text, load_trusted
from covfuse.training import config as cfgmod
from covfuse.training.config import RunConfig
from covfuse.training.lock import LOCK_NAME, RunLock

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]*$")


def check_name(name: str) -> str:
    """``name`` if it is a plain folder name, else a UserError."""
    if not isinstance(name, str) or not _NAME.match(name) or name in {".", ".."}:
        raise UserError(f"run name {name!r} must be a plain folder name (letters, digits, . _ = + , -; no / or \\)")
    return name


def find_run(run: str, runs_dir: str | Path = "runs") -> Path:
    """A run folder from a name (under runs_dir) or a path."""
    for candidate in (Path(run), Path(runs_dir) / run):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise UserError(f"no run {run!r}: neither {run}/config.yaml nor {Path(runs_dir) / run}/config.yaml exists")


def last_checkpoint(run_dir: Path) -> Path:
    """Where the checkpoint written every epoch lives (the one --resume continues from)."""
    return Path(run_dir) / CHECKPOINTS / "last.ckpt"


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    """``best`` or ``last`` of the run's checkpoints, or a path; a UserError when the file does not exist."""
    path = Path(run_dir) / CHECKPOINTS / f"{which}.ckpt" if which in ("best", "last") else Path(which)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (has the run finished an epoch?)")
    return path


def write_text(path: Path, text: str) -> None:
    """Write via a temporary name and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def recorded(config: RunConfig) -> RunConfig:
    """The config as the run folder keeps it: data.root absolute, so test, explain and report work from
    any directory (data_state.json keeps it as given, with the table's fingerprint)."""
    if not config.data.root:
        return config
    data = dataclasses.replace(config.data, root=os.path.abspath(config.data.root))
    return dataclasses.replace(config, data=data)


def resume_hint(config: RunConfig) -> str:
    """The command that continues this run."""
    where = "" if config.runs_dir == "runs" else f" --runs_dir {shlex.quote(str(config.runs_dir))}"
    return f"covfuse fit --name {shlex.quote(config.name)}{where} --resume"


def check_resume_epochs(ckpt: Path, max_epochs: int) -> None:
    """Refuse a --resume whose max_epochs is already behind the checkpoint, as Lightning would, but
    before config.yaml is rewritten (Lightning finds out only once training starts). An unreadable checkpoint is
    refused saying how to train the run again without it."""
    try:
        state = load_trusted(ckpt, what="checkpoint", mmap=True)  # counters only: tensors stay on disk
    except UserError as exc:
        raise UserError(f"{exc}, or delete it to train the run from its beginning") from None
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epoch = int(progress.get("completed", state.get("epoch", 0)))
    if max_epochs not in (-1, None) and epoch > max_epochs:
        raise UserError(f"--resume: {ckpt} has trained {epoch} epoch(s) already, more than trainer.max_epochs "
                        f"{max_epochs}; pass --trainer.max_epochs {epoch} or more")


def _occupied(run_dir: Path) -> bool:
    return run_dir.exists() and (not run_dir.is_dir() or any(p.name != LOCK_NAME for p in run_dir.iterdir()))


class RunFolder:
    """The folder a run is fitted into, from the first check to the last file (a context manager).

    Opening checks the folder and locks an existing one before anything is written, and finds the
    checkpoint a --resume continues from (:attr:`checkpoint`, None: from the beginning);
    :meth:`create` makes, clears or (--overwrite) replaces it once every other check has passed and
    writes config.yaml. Leaving the ``with`` block releases the lock; after a failure before the
    first checkpoint it also removes what this run created and puts the replaced run back.
    """

    def __init__(self, path: Path, *, overwrite: bool = False, resume: bool = False, rank0: bool = True):
        self.path, self.overwrite, self.resume, self.rank0 = Path(path), overwrite, resume, rank0
        self.lock: RunLock | None = None
        self.backup: Path | None = None  # --overwrite: where the previous run waits
        self.created = False
        self.checkpoint: Path | None = None
        if rank0:
            self._open()
        elif resume and last_checkpoint(self.path).is_file():
            self.checkpoint = last_checkpoint(self.path)

    def _open(self) -> None:
        run_dir = self.path
        if self.resume and self.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
        if self.resume:
            if not (run_dir / "config.yaml").is_file():
                raise UserError(f"{run_dir}: no run to resume (no config.yaml there); start it without --resume")
            self.lock = RunLock(run_dir)
            last = last_checkpoint(run_dir)
            self.checkpoint = last if last.is_file() else None
        elif _occupied(run_dir):
            if not self.overwrite:
                raise UserError(f"{run_dir} already exists; pass --overwrite to replace it, --resume to continue it, "
                                "or choose another --name")
            if not (run_dir / "config.yaml").is_file():
                raise UserError(f"{run_dir} is not a covfuse run folder (no config.yaml); refusing to delete it")
            self.lock = RunLock(run_dir)

    def create(self, config: RunConfig) -> None:
        """Make the folder the run writes into (rank 0 only) and write its config.yaml."""
        run_dir = self.path
        self.created = not self.resume
        if self.resume:
            if self.checkpoint is None:  # stopped before its first checkpoint: start again, keeping log.txt and config.yaml
                for p in run_dir.iterdir():
                    if p.name not in (LOCK_NAME, "log.txt", "config.yaml"):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
        else:
            if self.lock is not None and self.overwrite:
                self.backup = run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}")
                os.replace(run_dir, self.backup)  # the old lock travels with the folder and is held until the new one is
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir(exist_ok=True)
            new = RunLock(run_dir)
            if self.lock is not None:
                self.lock.release()
            self.lock = new
        write_text(run_dir / "config.yaml", cfgmod.dump(recorded(config)))

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            failed = kind is not None and issubclass(kind, Exception)
            if failed and self.rank0 and self.created and not (self.path / CHECKPOINTS).exists():
                shutil.rmtree(self.path, ignore_errors=True)
                if self.backup is not None:
                    os.replace(self.backup, self.path)
                    self.backup = None
        finally:
            if self.backup is not None:
                shutil.rmtree(self.backup, ignore_errors=True)
            if self.lock is not None:
                self.lock.release()
