"""Time the report's bootstrap: 10 cells x 5 runs x 20,000 rows (4,000 people), 2,000 resamples (50 runs).

    python benchmarks/report_bootstrap.py new   # what the report does: each cell scored once, all resamples at once
    python benchmarks/report_bootstrap.py old   # cluster_bootstrap + paired_cluster_bootstrap per cell (the
                                                # previous path when run against a checkout before issue 35)
"""
import sys, time
import numpy as np
from covfuse.studies import stats
rng = np.random.default_rng(0)
n, cells, runs = 20_000, 10, 5
groups = rng.integers(0, 4000, n); y = rng.random(n) < 0.4
probs = {f"c{i}": np.clip(y[None] * 0.3 + rng.random((runs, n)) * 0.7, 0, 1) for i in range(cells)}
t = time.perf_counter()
if sys.argv[1] == "old":
    for k, p in probs.items():
        stats.cluster_bootstrap(y, p, groups, "accuracy")
        if k != "c0":
            stats.paired_cluster_bootstrap(y, p, probs["c0"], groups, "accuracy")
else:
    sc = {k: stats.resample_scores(y, p, groups, "accuracy") for k, p in probs.items()}
    for k in probs:
        stats.interval_from(sc[k], "accuracy")
        if k != "c0":
            stats.difference_from(sc[k], sc["c0"], "accuracy")
print(sys.argv[1], f"{time.perf_counter() - t:.1f} s")
