"""Run independent chunks of work in worker processes (or in-process), yielding results as they finish."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity masks set by SLURM, taskset, containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_workers(num_items: int, per_worker: int = 5_000) -> int:
    """Processes worth starting for ``num_items``: spawning one costs ~0.5 s, so
    small jobs run in-process and big ones use every available CPU."""
    return max(1, min(available_cpus(), num_items // per_worker))


def run_chunks(fn: Callable[..., Any], tasks: Sequence[tuple], workers: int) -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(*tasks[i]))`` for every task, in completion order.

    ``workers <= 1`` runs in this process (no start-up cost, easy to debug). Otherwise a pool of
    *spawned* processes is used: the parent may hold torch's thread pools, which ``fork`` does not
    copy safely. At most ``2 * workers`` tasks are in flight, so results never pile up in memory.
    """
    if workers <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            yield i, fn(*task)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: dict = {}
        queue = iter(enumerate(tasks))
        for i, task in queue:
            pending[pool.submit(fn, *task)] = i
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                yield i, future.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending[pool.submit(fn, *nxt[1])] = nxt[0]
