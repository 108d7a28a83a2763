"""Interleaved timing: every variant once per round, ratios to a baseline taken within each round.

A shared machine drifts by tens of per cent from minute to minute; timing the variants in turn,
round after round, and dividing within a round lets a slow spell hit numerator and denominator
alike. We report the median of the per-round ratios and their spread (min-max).
"""
from __future__ import annotations

import datetime
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from covfuse.layers.autotune import cpu_name


@dataclass
class Ratio:
    """Median and spread (min, max) of per-round ratios to the baseline."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:.2f}x"

    def spread(self) -> str:
        return f"{self.median:.2f}x [{self.low:.2f}-{self.high:.2f}]"

    def as_dict(self) -> dict[str, float]:
        return {"median": round(self.median, 4), "min": round(self.low, 4), "max": round(self.high, 4)}


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


_CPU_TIME: bool | None = None  # `covfuse bench --clock`: None = CPU time with one torch thread only


def use_cpu_time(enabled: bool | None) -> None:
    """Time CPU runs by this process's CPU time (True), wall time (False), or by :func:`cpu_clock`'s default (None)."""
    global _CPU_TIME
    _CPU_TIME = enabled


def cpu_clock(device: torch.device | str) -> bool:
    """Whether to time with this process's CPU time: by default on a CPU with one torch thread, where
    CPU time is the work done and leaves out the time other jobs on a shared machine hold the core.
    With more threads CPU time adds up every thread's time, OpenMP's spin-waits included, which
    :func:`use_cpu_time` can ask for (steadier than wall time on a shared machine)."""
    if torch.device(device).type != "cpu":
        return False
    return torch.get_num_threads() == 1 if _CPU_TIME is None else _CPU_TIME


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, device: torch.device | str = "cpu",
                warmup: int = 1, cpu_time: bool | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, one sample per round, the variants interleaved (each round
    in another order, shuffled by a generator of its own).

    ``cpu_time`` (default: :func:`cpu_clock`) measures process CPU time instead of wall time; never
    use it when work happens in other processes (DataLoader workers)."""
    clock = time.process_time if (cpu_clock(device) if cpu_time is None else cpu_time) else time.perf_counter
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        # a new order each round (shuffled, with its own seeded generator): what a variant leaves
        # behind (allocator and cache state; it moved a small CPU layer's time by 1.6x) does not
        # always fall on the same successor
        order = names[:]
        random.Random(r).shuffle(order)
        for name in order:
            fn = variants[name]
            sync(device)
            start = clock()
            fn()
            sync(device)
            samples[name].append(clock() - start)
    return samples


def ratio(samples: dict[str, list[float]], name: str, baseline: str) -> Ratio:
    """Per-round ``name / baseline`` times: median and range."""
    r = [a / b for a, b in zip(samples[name], samples[baseline])]
    return Ratio(statistics.median(r), min(r), max(r))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def environment(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on, for the JSON record and the table's header."""
    device = torch.device(device)
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_time": cpu_clock(device),
    }
    try:
        env["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return env


def header(env: dict) -> str:
    load = env.get("load_average")
    threads = f"{env['torch_threads']} thread{'s' * (env['torch_threads'] != 1)}"
    return (f"{env['device']}, torch {env['torch']}, {threads} of {env['cpu_cores']} cores"
            + (f", load average {load[0]:.1f} at start" if load else "")
            + (f"; layer/model times are this process's CPU time ({threads})" if env.get("cpu_time") else ""))
