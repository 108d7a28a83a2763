"""Self-tuning `auto` for hybrid convs: time the exact back-ends once per call signature and
remember the fastest, the way ``torch.backends.cudnn.benchmark`` picks a conv algorithm.

A signature is (layer shape and options, batch, number of distinct covariate rows, device, dtype,
autocast and grad mode). The first call with a new signature runs each candidate once to warm up
and then ``repeats`` interleaved times (forward, plus backward when grad is enabled, on detached
copies, so the caller's graph and ``.grad`` are untouched) and keeps the back-end with the
lowest median. Later calls look the choice up. When tuning is off, ``auto`` uses the measured
rule in :func:`covfuse.layers.hybrid_functional.rule_backend`.

Tuning is on by default on CUDA (where the rule is not measured) and off on CPU (where the rule
was measured, and a shared CPU makes one-off timings unreliable); :func:`set_autotune` or the
environment variable ``COVFUSE_AUTOTUNE=1|0`` changes that. Every choice (tuned or by rule) is
logged once on the ``covfuse.layers`` logger and kept in :func:`auto_choices`.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

log = logging.getLogger("covfuse.layers")

_ENABLED: bool | None = None  # None: default per device (see module docstring)


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` picked for one signature, and why (``times_ms`` is empty for a rule choice)."""

    backend: str
    how: str  # "tuned" or "rule"
    signature: str
    times_ms: dict[str, float] = field(default_factory=dict)


_CHOICES: dict[tuple, AutoChoice] = {}


def set_autotune(enabled: bool | None) -> None:
    """Turn tuning on or off for every device (None restores the default: on for CUDA only)."""
    global _ENABLED
    _ENABLED = enabled


def autotune_enabled(device: torch.device) -> bool:
    """Whether `auto` tunes on ``device`` now: :func:`set_autotune`, else ``COVFUSE_AUTOTUNE``, else CUDA only."""
    if _ENABLED is not None:
        return _ENABLED
    env = os.environ.get("COVFUSE_AUTOTUNE", "").strip().lower()
    if env in ("1", "true", "on", "yes"):
        return True
    if env in ("0", "false", "off", "no"):
        return False
    return device.type == "cuda"


def auto_choices() -> list[AutoChoice]:
    """Every choice `auto` has made in this process, in order (for `covfuse describe`, logs, benchmarks)."""
    return list(_CHOICES.values())


def clear_choices() -> None:
    """Forget every remembered choice (the next call with each signature decides again)."""
    _CHOICES.clear()


def lookup(key: tuple) -> AutoChoice | None:
    return _CHOICES.get(key)


def remember(key: tuple, choice: AutoChoice) -> AutoChoice:
    _CHOICES[key] = choice
    detail = ", ".join(f"{b} {t:.2f} ms" for b, t in sorted(choice.times_ms.items(), key=lambda kv: kv[1]))
    log.info("auto back-end for %s: %s (%s%s)", choice.signature, choice.backend, choice.how,
             f": {detail}" if detail else "")
    return choice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_candidates(candidates: dict[str, Callable[[], None]], device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Median milliseconds of each candidate step, candidates interleaved within each round."""
    for step in candidates.values():  # warm-up: allocator, oneDNN/cuDNN plans
        step()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, step in candidates.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def can_tune() -> bool:
    """False while tracing for torch.compile or capturing a CUDA graph (timing would break both)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
