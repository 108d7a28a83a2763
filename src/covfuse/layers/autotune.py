"""Self-tuning `auto` for hybrid convs: time the exact back-ends where they run, once per call
signature and machine, and keep the fastest, the way ``torch.backends.cudnn.benchmark`` picks a
conv algorithm; the choice is kept on disk so later processes on the same machine reuse it.

A signature is (layer shape and options, batch, number of distinct covariate rows, device, dtype,
memory layout, autocast and grad mode). The first call with a new signature looks for a choice
made earlier on this machine (:func:`cache_dir`), and else measures the candidates (:func:`measure`:
forward, plus backward when grad is enabled, on detached copies, so the caller's graph and
``.grad`` are untouched) and stores the winner (as provisional when its runs disagreed or its
time budget ran out: a busy machine). Later calls in the process look the choice up in memory. When tuning is off (``COVFUSE_AUTOTUNE=0`` or :func:`set_autotune`), and while tracing for
torch.compile, ``auto`` follows the rule in :func:`covfuse.layers.hybrid_functional.rule_backend`.

Every choice is logged on the ``covfuse.layers`` logger with why it was made (tuned, cached or
rule) -- once per signature, and again after :func:`log_again` (each training run's log) -- and
kept in :func:`auto_choices`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

import covfuse

log = logging.getLogger("covfuse.layers")

# Version of the tuning protocol and the back-ends' code: a disk entry of another version is stale.
PROTOCOL = 2
# A candidate whose first timed run takes FAR times the best first run so far, or whose warm-up
# (one-off plans included; on CUDA, where a warm-up may compile, only a batch-splitting one's)
# takes FAR_WARM times, is dropped without further runs.
FAR, FAR_WARM = 2.0, 3.0
# A run shorter than this (ms) never drops its candidate early: cheap to time again, and the
# noisiest (a 20-40 ms step at 2 threads varies by 2x from run to run).
CHEAP_MS = 50.0
# After each round, a candidate whose fastest run is over CLOSE times the leader's fastest is dropped.
CLOSE = 1.15
MIN_RUNS, MAX_RUNS = 3, 6  # timed runs of the leader before it is trusted; the most any candidate gets
# The leader's slowest run over its fastest above this: the machine was busy, the choice is provisional.
STEADY = 1.3
# Cap of one tuning, on the timing clock: the larger of BUDGET_S and BUDGET_STEPS times the best
# first run. Past it, candidates not yet tried are skipped and the choice is provisional (a tiny
# layer, where one-off kernel generation and waiting threads can dwarf the layer itself).
BUDGET_S, BUDGET_STEPS = 2.0, 30

_ENABLED: bool | None = None  # None: COVFUSE_AUTOTUNE, else on
_REFRESH = False  # True: tune even where the disk holds a choice, and replace it
_DISK_OK = True  # False once the cache folder proved unwritable (warned once; memory only from then on)


@dataclass(frozen=True)
class AutoChoice:
    """What `auto` picked for one signature and why: ``how`` is "tuned" (measured now), "cached"
    (measured earlier on this machine) or "rule"; ``times_ms`` (empty for a rule choice) holds each
    candidate's fastest run and ``runs`` its number of timed runs (1: dropped early, or left alone)."""

    backend: str
    how: str
    signature: str
    times_ms: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        """One line for the log: the back-end, how it was chosen and the timings behind it."""
        detail = ", ".join(f"{b} {t:.2f} ms" + (f" ({self.runs[b]} run{'s' * (self.runs[b] != 1)})" if b in self.runs else "")
                           for b, t in sorted(self.times_ms.items(), key=lambda kv: kv[1]))
        why = "; ".join(part for part in (self.note, detail) if part)
        return f"auto back-end for {self.signature}: {self.backend} ({self.how}{': ' + why if why else ''})"


_CHOICES: dict[tuple, AutoChoice] = {}
_LOGGED: set[tuple] = set()


def set_autotune(enabled: bool | None, refresh: bool = False) -> None:
    """Turn tuning on or off on every device (None: ``COVFUSE_AUTOTUNE``, else on); ``refresh=True``
    re-measures signatures the disk cache already holds and replaces their entries."""
    global _ENABLED, _REFRESH
    _ENABLED, _REFRESH = enabled, refresh


def autotune_enabled(device: torch.device) -> bool:
    """Whether `auto` tunes on ``device`` now: :func:`set_autotune`, else ``COVFUSE_AUTOTUNE=1|0``, else yes."""
    if _ENABLED is not None:
        return _ENABLED
    env = os.environ.get("COVFUSE_AUTOTUNE", "").strip().lower()
    return env not in ("0", "false", "off", "no")


def auto_choices() -> list[AutoChoice]:
    """Every choice `auto` has made in this process, in order (for logs and benchmarks)."""
    return list(_CHOICES.values())


def clear_choices() -> None:
    """Forget every choice remembered in this process (the next call with each signature decides
    again: from the disk cache, by tuning, or by the rule)."""
    _CHOICES.clear()
    _LOGGED.clear()


def log_again() -> None:
    """Log each remembered choice again at its next use (a new run's log starts)."""
    _LOGGED.clear()


def lookup(key: tuple) -> AutoChoice | None:
    """The choice remembered for ``key``, logged if it was not since :func:`log_again`."""
    choice = _CHOICES.get(key)
    if choice is not None and key not in _LOGGED:
        _LOGGED.add(key)
        log.info("%s", choice.describe())
    return choice


def remember(key: tuple, choice: AutoChoice) -> AutoChoice:
    """Keep ``choice`` for ``key`` in this process and log it."""
    _CHOICES[key] = choice
    _LOGGED.add(key)
    log.info("%s", choice.describe())
    return choice


# --- the machine and the disk cache ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(device: torch.device) -> dict[str, str | int]:
    """What a timing on ``device`` depends on besides the signature: the CPU model and instruction
    set, core and torch thread counts (or the GPU's name and compute capability), torch and covfuse
    versions, and :data:`PROTOCOL`."""
    info: dict[str, str | int] = {"device": device.type, "torch": torch.__version__,
                                  "covfuse": covfuse.__version__, "protocol": PROTOCOL}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        info["name"] = cpu_name()
        info["isa"] = torch.backends.cpu.get_cpu_capability()
        info["cores"] = os.cpu_count() or 0
        info["threads"] = torch.get_num_threads()
    return info


def cache_home() -> str:
    """covfuse's per-user cache (tuned choices, the demo's twins): ``$COVFUSE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/covfuse``, else ``~/.cache/covfuse``. Here because layers imports no other package."""
    return os.environ.get("COVFUSE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "covfuse")


def cache_dir() -> str:
    """Where tuned choices are kept: ``autotune/`` under :func:`cache_home`, one small JSON file each."""
    return os.path.join(cache_home(), "autotune")


def _entry_path(device: torch.device, key: str) -> tuple[str, dict]:
    info = machine(device)
    digest = hashlib.sha256(json.dumps([info, key], sort_keys=True).encode()).hexdigest()[:32]
    return os.path.join(cache_dir(), f"{digest}.json"), info


def load_choice(device: torch.device, key: str, candidates: list[str]) -> dict | None:
    """The entry stored for ``key`` on this machine, or None when there is none or it cannot be
    trusted: unreadable, of another machine, torch, covfuse or protocol version, or measured over
    another set of candidates."""
    path, info = _entry_path(device, key)
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
        valid = (isinstance(entry, dict) and entry.get("machine") == info and entry.get("key") == key
                 and entry.get("candidates") == sorted(candidates) and entry.get("backend") in candidates
                 and isinstance(entry.get("times_ms"), dict) and isinstance(entry.get("runs"), dict))
    except (OSError, ValueError):
        return None
    if not valid:
        log.debug("ignoring the auto-tuning entry %s: not measured on this machine for these candidates", path)
        return None
    return entry


def store_choice(device: torch.device, key: str, candidates: list[str], choice: AutoChoice,
                 steady: bool = True) -> None:
    """Write ``choice`` for ``key`` on this machine (a temporary file renamed over the entry, so a
    reader or a second writer never sees half a file); ``steady=False`` marks one measured on a busy
    machine, which a later process on a quiet one measures again. An unwritable folder is warned
    about once; choices then stay in memory."""
    global _DISK_OK
    if not _DISK_OK:
        return
    path, info = _entry_path(device, key)
    entry = {"machine": info, "key": key, "candidates": sorted(candidates), "backend": choice.backend,
             "times_ms": choice.times_ms, "runs": choice.runs, "signature": choice.signature,
             "measured": time.strftime("%Y-%m-%d %H:%M:%S"), "steady": steady}
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(entry, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        _DISK_OK = False
        try:
            os.remove(tmp)
        except OSError:
            pass
        log.warning("cannot write the auto-tuning cache in %s (%s); tuned back-ends are kept in this process only "
                    "(set COVFUSE_CACHE_DIR to a writable folder to keep them)", os.path.dirname(path),
                    exc.strerror or exc)


def quiet() -> bool:
    """Whether this machine looks idle now: a 1-minute load average under half its cores (False
    where the load is unknown)."""
    try:
        return os.getloadavg()[0] < 0.5 * (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return False


def decide(device: torch.device, key: str, signature: str, candidates: list[str],
           tune: Callable[[], "Timing"]) -> AutoChoice | None:
    """The choice for ``key``: the disk entry of this machine if there is a valid one (unless
    refreshing, or it was measured on a busy machine and this one is :func:`quiet` now), else
    ``tune()``'s winner, stored. None when every candidate failed."""
    if not _REFRESH:
        entry = load_choice(device, key, candidates)
        if entry is not None and (entry.get("steady", True) or not quiet()):
            busy = "" if entry.get("steady", True) else " on a busy machine"
            return AutoChoice(entry["backend"], "cached", signature, entry["times_ms"], entry["runs"],
                              note=f"measured {entry.get('measured', '?')}{busy}")
    timing = tune()
    if timing.best is None:
        return None
    notes = [f"{name} failed ({why})" for name, why in timing.failed.items()]
    if timing.skipped:
        notes.append(f"time budget spent, not tried: {', '.join(timing.skipped)}")
    elif not timing.steady:
        notes.append("timings unsteady (a busy machine?)")
    if not timing.steady:
        notes[-1] += "; stored as provisional: measured again by a process that starts on a quiet machine"
    choice = AutoChoice(timing.best, "tuned", signature, timing.ms, timing.runs, note="; ".join(notes))
    store_choice(device, key, candidates, choice, steady=timing.steady)
    return choice


# --- measuring ---------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Result of :func:`measure`: each candidate's fastest run (ms) and number of timed runs, the
    winner (None when all failed), whether the winner's runs agreed, why any candidate failed and
    which were skipped for time."""

    ms: dict[str, float]
    runs: dict[str, int]
    best: str | None
    failed: dict[str, str]
    steady: bool = True
    skipped: list[str] = field(default_factory=list)  # not tried: the budget was spent


def clock(device: torch.device) -> Callable[[], float]:
    """Seconds for timing ``device``'s work: this process's CPU time on a CPU (the work done, with
    OpenMP's spin-waits, and not the time other jobs hold the cores of a shared machine), wall time
    elsewhere (with a device sync around each run)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(steps: dict[str, Callable[[], object]], device: torch.device,
            splits: frozenset[str] | set[str] = frozenset()) -> Timing:
    """Time each candidate step as training runs it, cheaply enough to run on first use.

    Each candidate is warmed up on its own (plans, allocator) and timed once right after, in the
    order given except that those in ``splits`` (back-ends that split the batch, several times
    slower where small batches are slow) go last. One whose warm-up already took :data:`FAR_WARM`
    times the best first run so far is dropped untimed (on CUDA only those in ``splits``: there a
    warm-up may include compiling a kernel), and so is one whose first run took :data:`FAR` times;
    a run under :data:`CHEAP_MS` drops nothing. The
    rest are timed in interleaved rounds (each in another order: what a candidate leaves behind in
    the allocator can slow the next one) and ranked by their fastest
    run (load on a shared machine only adds time); after each round a candidate :data:`CLOSE`
    times slower than the leader is dropped. It stops once the leader has :data:`MIN_RUNS` runs
    and every other survivor's fastest run is slower than the leader's median, or after
    :data:`MAX_RUNS`, or when the budget (:data:`BUDGET_S`, :data:`BUDGET_STEPS`; same clock) is
    spent. A candidate that raises is dropped. The result is ``steady`` unless the leader's runs
    spread by more than :data:`STEADY` or the budget left candidates untried.
    """
    tick = clock(device)
    early = set(steps) if device.type == "cpu" else set(splits)
    began = tick()

    def spent() -> bool:
        return best < float("inf") and tick() - began > max(BUDGET_S, BUDGET_STEPS * best / 1e3)

    def timed(step: Callable[[], object]) -> float:
        _sync(device)
        start = tick()
        step()
        _sync(device)
        return (tick() - start) * 1e3

    def failure(exc: Exception) -> str:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"

    samples: dict[str, list[float]] = {}
    failed: dict[str, str] = {}
    dropped: set[str] = set()
    best = float("inf")
    skipped: list[str] = []
    for name in sorted(steps, key=lambda n: n in splits):  # stable: the order given, splitters last
        if spent():
            skipped.append(name)
            continue
        try:
            warm = timed(steps[name])
            if name in early and warm > max(FAR_WARM * best, CHEAP_MS):
                samples[name] = [warm]
                dropped.add(name)
                continue
            samples[name] = [timed(steps[name])]
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is not a choice
            samples.pop(name, None)
            failed[name] = failure(exc)
            continue
        best = min(best, samples[name][0])
    alive = [n for n in samples if n not in dropped and samples[n][0] <= max(FAR * best, CHEAP_MS)]
    lead = min(alive, key=lambda n: samples[n][0]) if alive else None
    for r in range(1, MAX_RUNS):
        if len(alive) < 2 or spent():
            break
        order = alive[r % len(alive):] + alive[: r % len(alive)]
        for name in (order[::-1] if r % 2 else order):  # not always after the same predecessor
            try:
                samples[name].append(timed(steps[name]))
            except Exception as exc:  # noqa: BLE001
                failed[name] = failure(exc)
        alive = [n for n in alive if n not in failed]
        if not alive:
            lead = None
            break
        lead = min(alive, key=lambda n: min(samples[n]))
        alive = [n for n in alive if n == lead or min(samples[n]) <= CLOSE * min(samples[lead])]
        typical = statistics.median(samples[lead])
        if r + 1 >= MIN_RUNS and all(min(samples[n]) > typical for n in alive if n != lead):
            break
    ms = {n: min(v) for n, v in samples.items() if n not in failed}
    steady = not skipped and (lead is None or max(samples[lead]) <= STEADY * min(samples[lead]))
    return Timing(ms, {n: len(samples[n]) for n in ms}, lead, failed, steady, skipped)


def can_tune() -> bool:
    """False while tracing for torch.compile or capturing a CUDA graph (timing would break both)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
