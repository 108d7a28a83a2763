"""SLURM job arrays for a study: one array task per run, each running the same code as a local sweep.

A plain ``sbatch`` script rather than submitit: the user can read (and edit) exactly what will
run, and nothing but ``sbatch`` is needed on the login node. Task i runs ``covfuse sweep ...
--task i``, which re-plans the study from the same arguments and trains run i (skipping it when
done, resuming it when a previous attempt was interrupted). ``--signal=SIGUSR1@90`` and
``--requeue`` let Lightning's SLURM plugin save a checkpoint and requeue a task near its time
limit; multi-GPU runs inside a task stay Lightning DDP (``--trainer.devices``).
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from covfuse.errors import UserError
from covfuse.io import atomic_write_text


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus: int = 0
    cpus: int = 4
    mem: str | None = None
    time: str = "04:00:00"
    max_parallel: int | None = None
    account: str | None = None


def covfuse_command() -> list[str]:
    """covfuse by the absolute path of the environment running now: a batch job's PATH is the
    login shell's, where another (or no) covfuse may come first."""
    script = Path(sys.executable).parent / "covfuse"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "covfuse.cli"]


def task_command(task_argv: Sequence[str]) -> str:
    """The command one array task runs (``$SLURM_ARRAY_TASK_ID`` left for the shell to fill in)."""
    return shlex.join([*covfuse_command(), "sweep", *task_argv]) + ' --task "$SLURM_ARRAY_TASK_ID"'


def render(name: str, num_runs: int, task_argv: Sequence[str], log_dir: Path, o: SlurmOptions,
           workdir: Path | None = None) -> str:
    array = f"0-{num_runs - 1}" + (f"%{o.max_parallel}" if o.max_parallel else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=covfuse-{name}", f"#SBATCH --array={array}",
             f"#SBATCH --output={log_dir}/%A_%a.out", f"#SBATCH --time={o.time}",
             f"#SBATCH --cpus-per-task={o.cpus}", "#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue"]
    if o.partition:
        lines.append(f"#SBATCH --partition={o.partition}")
    if o.account:
        lines.append(f"#SBATCH --account={o.account}")
    if o.gpus:
        lines.append(f"#SBATCH --gres=gpu:{o.gpus}")
        lines.append(f"#SBATCH --ntasks-per-node={o.gpus}")  # Lightning DDP: one process per GPU
    if o.mem:
        lines.append(f"#SBATCH --mem={o.mem}")
    lines += [
        "",
        f"# {num_runs} runs of study {name}; task i trains run i of {log_dir.parent}/study.json",
        "# (skipped when done, resumed when interrupted). Submit with: sbatch THIS_FILE",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir or Path.cwd()))}",
        f"srun {task_command(task_argv)}",
        "",
    ]
    return "\n".join(lines)


def write_script(study_dir: Path, name: str, num_runs: int, task_argv: Sequence[str], o: SlurmOptions) -> Path:
    log_dir = Path(study_dir) / "slurm"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "sweep.sbatch"
    # absolute: sbatch resolves --output against the folder it is called from, which may be another
    atomic_write_text(path, render(name, num_runs, task_argv, log_dir.resolve(), o))
    os.chmod(path, 0o755)
    return path


def submit(script: Path) -> str:
    """``sbatch script``; returns sbatch's answer (the job id line)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(f"sbatch not found on this machine; copy {script} to the cluster's login node and run "
                        "`sbatch` there, or drop --submit")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"sbatch refused {script}: {' '.join(done.stderr.split())[:200]}")
    return done.stdout.strip()
