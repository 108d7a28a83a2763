"""`covfuse status STUDY [--format text|json]`: where a study stands, run by run: done, running
(host, pid, since), interrupted (resumable), failed (its error line) or pending, with durations
and an estimate of the time left. Reads the study folder only; safe while sweeps run.
"""
from __future__ import annotations

import argparse
import json

from covfuse.cli._common import Parser


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="covfuse status", description=__doc__.split(": ", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study folder, or its name under --runs-dir")
    p.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", help="folder of studies (default: runs)")
    p.add_argument("--format", default="text", choices=["text", "json"], help="what to print (default: text)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from covfuse.studies.status import study_status, to_text
    from covfuse.studies.sweep import load_study

    study = load_study(args.study, args.runs_dir)
    status = study_status(study)
    print(json.dumps(status, indent=2) if args.format == "json" else to_text(status, study), end="\n" if args.format == "json" else "")
    return 0
