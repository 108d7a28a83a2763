"""`covfuse test RUN`: evaluate a run's best checkpoint on valid and test; rewrites metrics.json."""
from __future__ import annotations

import argparse

from covfuse.cli._common import Parser


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="covfuse test", description=__doc__.split(": ", 1)[1])
    p.add_argument("run", help="run name (under --runs_dir) or path to a run folder")
    p.add_argument("--runs_dir", default="runs", help="folder holding run folders (default: runs)")
    p.add_argument("--ckpt", default="best", help="best, last, or a path to a .ckpt (default: best)")
    p.add_argument("--data.root", "--root", dest="root", default=None,
                   help="the run's data at its new place, if it moved (checked against the table's fingerprint; "
                        "default: the run's data.root)")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (default: auto; one device)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from covfuse.training.results import summary
    from covfuse.training.run import evaluate_run

    run_dir = evaluate_run(args.run, runs_dir=args.runs_dir, which=args.ckpt, accelerator=args.accelerator, root=args.root)
    print(f"{run_dir}: {summary(run_dir)}")
    return 0
