"""Time parsing one sweep run's flags into a RunConfig: the shared parser (what planning uses) against a
new parser per run (what planning did before), 30 parses each.

    python benchmarks/plan_parse.py
"""
from __future__ import annotations

import time

from covfuse.training import config as cfgmod

ARGV = ["--data.root", "/tmp", "--seed", "1", "--name", "x", "--runs_dir", "/tmp/r", "--optim.lr", "3e-3"]


def per_run(fresh: bool, count: int = 30) -> float:
    start = time.perf_counter()
    for _ in range(count):
        cfgmod.parse(ARGV, extra=(lambda p: None) if fresh else None)  # any `extra` builds a new parser
    return (time.perf_counter() - start) / count


if __name__ == "__main__":
    cfgmod.parse(ARGV)  # imports and the shared parser, outside the timings
    print(f"new parser per run: {per_run(True) * 1000:.0f} ms; shared parser: {per_run(False) * 1000:.0f} ms")
