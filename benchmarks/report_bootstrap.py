"""Time `covfuse report` on a study of 10 cells x 5 seeds (50 runs), each scored on 20,000 test rows of
4,000 people, 2,000 resamples: the issue-35 target (under 10 s on the CI's 2-core CPU).

    PYTHONPATH=src python benchmarks/report_bootstrap.py [--out DIR] [--profile]

Writes the study (binary task, thresholds from a "youden" rule per run) under DIR (default: a temporary
folder), then times `build_report` and prints where its time went (with --profile, the top functions).
"""
from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from covfuse.studies.report import build_report
from covfuse.studies.sweep import Run, Study, write_study

CELLS, SEEDS, ROWS, PEOPLE = 10, 5, 20_000, 4_000


def write(root: Path) -> Study:
    rng = np.random.default_rng(0)
    groups = np.sort(rng.integers(0, PEOPLE, ROWS))
    risk = 1 / (1 + np.exp(-rng.normal(0, 1.2, PEOPLE)))[groups]
    y = (rng.uniform(size=ROWS) < risk).astype(int)
    ids = [f"img{i:06d}" for i in range(ROWS)]
    runs, cells = [], {}
    for c in range(CELLS):
        name = f"cell{c}"
        cells[name] = {"model.fusion": name}
        for seed in range(SEEDS):
            folder = root / name / f"s{seed}"
            folder.mkdir(parents=True)
            logit = np.log(risk / (1 - risk)) * (0.5 + 0.1 * c) + rng.normal(0, 0.5, ROWS)
            p = 1 / (1 + np.exp(-logit))
            with open(folder / "predictions.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "group", "split", "label", "probability"])
                w.writerows([i, f"p{g}", "test", t, f"{q:.6f}"] for i, g, t, q in zip(ids, groups, y, p))
            threshold = float(np.clip(0.5 + rng.normal(0, 0.05), 0.05, 0.95))
            (folder / "metrics.json").write_text(json.dumps(
                {"task": "binary", "test": {}, "valid": {}, "threshold": {"rule": "youden", "value": threshold,
                                                                         "split": "valid"}}))
            runs.append(Run(len(runs), name, seed, str(folder), cells[name], {}))
    study = Study("bench", "sweep", str(root), [], cells, list(range(SEEDS)), {}, 0, "cell0", runs, [])
    write_study(study)
    return study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    root = (args.out or Path(tempfile.mkdtemp(prefix="covfuse-report-bench-"))) / "study"
    t = time.perf_counter()
    study = write(root)
    print(f"wrote {CELLS} cells x {SEEDS} seeds x {ROWS:,} rows ({PEOPLE:,} people) in {time.perf_counter() - t:.1f} s: {root}")
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    cpu = time.process_time()
    report = build_report(study, n_boot=2000, seed=0)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    print(f"build_report: {wall:.1f} s wall, {cpu:.1f} s CPU ({len(report['rows'])} rows, "
          f"{len(report['rows'][0].get('also', {}))} further scores, 2,000 resamples)")


if __name__ == "__main__":
    main()
