"""`covfuse report STUDY [--baseline CELL] [--metric accuracy] [--format md|json|csv|html]`: compare a
study's cells with its baseline (pooled CIs and paired tests that resample people, a test across
seeds/folds, Holm-adjusted p-values, verdicts) and write STUDY/report.md, report.json, report.csv
and figures/ (with --metric other than the default: report-METRIC.* beside them); prints the report
in the chosen format on stdout and the files it wrote on stderr (html: writes STUDY/report.html, one
self-contained page with the figures embedded, and prints its path). Made of the runs that finished: runs
that failed or are not done yet are named in it, and a number that cannot be computed shows as — with its
reason.
"""
from __future__ import annotations

import argparse

from covfuse.cli._common import Parser
from covfuse.errors import UserError


def parser() -> argparse.ArgumentParser:
    from covfuse.training.metrics import TASK_SCORES
    from covfuse.training.tasks import direction

    names = list(dict.fromkeys(n for task in TASK_SCORES.values() for n in task))
    p = Parser(prog="covfuse report", description=__doc__.split(": ", 1)[1],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study folder, or its name under --runs-dir")
    p.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default="runs", help="folder of studies (default: runs)")
    p.add_argument("--baseline", default=None, help="cell to compare with (default: the study's baseline)")
    p.add_argument("--metric", default=None, choices=names,
                   help="score to compare (default: accuracy; multi-class: balanced_accuracy; regression: mae; "
                   f"survival: c_index); lower is better for {', '.join(n for n in names if direction(n) == 'min')}")
    p.add_argument("--format", default="md", choices=["md", "json", "csv", "html"],
                   help="what to print (default: md; html writes report.html and prints its path)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--unit", default="group", choices=["group", "image"],
                   help="what the bootstrap resamples: group (people; default) or image (data without repeated people)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.bootstrap < 100:
        raise UserError(f"--bootstrap must be at least 100, got {args.bootstrap}")
    import sys

    from covfuse.studies.report import build_report, report_files, to_csv, to_json, to_markdown, write_report
    from covfuse.studies.status import settle
    from covfuse.studies.sweep import load_study

    study = load_study(args.study, args.runs_dir)
    settle(study)  # runs and trials whose process died are marked killed first
    report = build_report(study, baseline=args.baseline, metric=args.metric, n_boot=args.bootstrap, unit=args.unit)
    write_report(study, report)
    files = report_files(report)
    html = None
    if args.format == "html":
        from covfuse.studies.report_html import write_html

        html = write_html(report, study)
    from covfuse.training.tracking import log_report

    log_report(study.study_dir, [*files, *(["report.html"] if html else [])])  # the study's MLflow run, if any
    if html is not None:
        print(f"covfuse report: wrote {', '.join(files)} and report.html in {study.study_dir}", file=sys.stderr)
        print(html)
        return 0
    print(f"covfuse report: wrote {', '.join(files)} in {study.study_dir}", file=sys.stderr)
    text = {"md": lambda: to_markdown(report, study), "json": lambda: to_json(report), "csv": lambda: to_csv(report)}
    print(text[args.format](), end="")
    return 0
