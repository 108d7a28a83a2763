"""`covfuse predict RUN FILE... --covariates A=1,B=0` (or `--csv FILE`): the run's prediction per file.

Parses the arguments into tables and prints; covfuse.training.predict.predict_rows does the work,
one path for every source: the files and their raw covariate values, encoded by the run's saved
encoder and read by the dataset `covfuse test` uses with the run's saved preprocessing, so a file
gets the probability `covfuse test` wrote for it. CelebA runs take image files with 0/1 attribute
values (or a CSV with columns image,<covariates>) and print `image,<covariates>,<prediction>`; runs
on a manifest or BIDS take their files with raw values (or a manifest) and print
`path,subject,<covariates>,<prediction>`.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from covfuse.cli._common import Parser
from covfuse.errors import UserError, suggest


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="covfuse predict", description="Print the run's prediction (e.g. P(target = 1)) for images or "
               "volumes with given covariates.")
    p.add_argument("run", help="run name (under --runs_dir) or path to a run folder")
    p.add_argument("images", nargs="*", help="image files, or .nii/.nii.gz volumes for a run trained on a manifest")
    p.add_argument("--covariates", default="",
                   help="covariate values for the FILE arguments, e.g. Male=1,Young=0; for volumes the raw values as "
                        "in the manifest, e.g. age=71,sex=F,APOE4=1 (one left out or empty counts as missing where "
                        "the training data had it missing)")
    p.add_argument("--csv", dest="csv_file", default=None,
                   help="image runs: a CSV with columns image,<covariate names>; volume runs: a manifest as in "
                        "training (subject, path, the raw covariate columns); paths relative to the CSV's folder")
    p.add_argument("--extrapolate", action="store_true",
                   help="predict also for covariate values the training split never held (out of its range, an "
                        "unseen level) instead of refusing them")
    p.add_argument("--strict", action="store_true",
                   help="--csv: refuse a table with a row outside the training range (default: predict every row, "
                        "mark those in the out_of_range column and say how many on stderr)")
    p.add_argument("--times", default=None,
                   help="survival runs: also S(t | x) at these times (data.target's unit), e.g. 1,2.5,4: one S@<t> "
                        "column each beside risk (the run's Breslow baseline; docs/survival.md)")
    p.add_argument("--runs_dir", default="runs", help="folder holding run folders (default: runs)")
    p.add_argument("--ckpt", default="best", help="best, last, or a path to a .ckpt (default: best)")
    p.add_argument("--batch_size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (default: auto; one device)")
    return p


def _number(name: str, text: str, where: str) -> str:
    """``text``, a finite number (a CelebA run's 0/1 attribute values are numbers)."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: covariate {name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: covariate {name} is {text}; give a finite number")
    return text


def split_covariates(text: str, names: list[str]) -> dict[str, str]:
    """``"Male=1,Young=0"`` (or ``[Male=1,Young=0]``) -> {name: value text} for names in ``names``
    (case-insensitive); a pair without ``=``, a repeated or an unknown name is an error."""
    lower = {n.lower(): n for n in names}
    given: dict[str, str] = {}
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise UserError(f"--covariates: expected NAME=VALUE, got {part!r}")
        if key.lower() in (g.lower() for g in given):
            raise UserError(f"--covariates: {key} is given twice")
        if key.lower() not in lower:
            raise UserError(f"--covariates: the model has no covariate {key!r}{suggest(key, names)}; it takes "
                            f"{', '.join(names) or 'none (drop --covariates)'}")
        given[lower[key.lower()]] = value.strip()
    return given


def parse_covariates(text: str, names: list[str]) -> list[str]:
    """``"Male=1,Young=0"`` -> number texts in the order of ``names`` (all required)."""
    given = split_covariates(text, names)
    missing = [n for n in names if n not in given]
    if missing:
        example = ",".join(f"{n}=1" for n in names)
        raise UserError(f"--covariates: missing {', '.join(missing)} (the model takes {', '.join(names)}; e.g. --covariates {example})")
    return [_number(n, given[n], "--covariates") for n in names]


def read_csv(path: Path, names: list[str]) -> tuple[list[Path], list[list[str]]]:
    """Image paths and covariate rows (number texts) from a CSV with columns image,<names> (any order, extra
    columns ignored)."""
    if not path.is_file():
        raise UserError(f"{path}: no such CSV file")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = {h.strip().lower(): h for h in (reader.fieldnames or [])}
        needed = ["image", *names]
        missing = [n for n in needed if n.lower() not in header]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected columns {','.join(needed)}")
        images, rows = [], []
        for line, row in enumerate(reader, start=2):
            image = Path(row[header["image"]].strip())
            images.append(image if image.is_absolute() else path.parent / image)
            rows.append([_number(n, (row[header[n.lower()]] or "").strip(), f"{path}:{line}") for n in names])
    if not images:
        raise UserError(f"{path}: no rows")
    return images, rows


def main(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)  # options may come between RUN and the images
    if not args.images and not args.csv_file:
        raise UserError("give IMAGE files (with --covariates) or --csv FILE; see `covfuse predict --help`")
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.covariates and not args.images:
        raise UserError("--covariates applies to IMAGE arguments; with --csv the covariates come from its columns")
    from covfuse.training import config as cfgmod
    from covfuse.training.module import load_module
    from covfuse.training.rundir import checkpoint_path, find_run
    from covfuse.training.datamodule import STATE_FILE, read_state
    from covfuse.training.predict import predict_rows, run_state
    from covfuse.training.tasks import task_of

    run_dir = find_run(args.run, args.runs_dir)
    config = cfgmod.load(run_dir / "config.yaml")
    precision = config.trainer.precision  # as `covfuse test` evaluates
    state = read_state(run_dir)
    if state is None and str(config.data.root).lower().endswith((".csv", ".tsv")):
        raise UserError(f"{run_dir}: no {STATE_FILE} (the covariate encoder a run writes when training starts); "
                        "train the run again with `covfuse fit`")
    times = reference = None
    if args.times is not None:  # checked before any image is read
        from covfuse.training.survival_reference import Reference

        times = cfgmod.parse_times(args.times)
        if config.model.head != "survival":
            raise UserError(f"--times gives survival probabilities; {run_dir} has head {config.model.head}, not survival")
        reference = Reference.load(run_dir)
        last = float(reference.baseline.times[-1]) if len(reference.baseline.times) else 0.0
        beyond = [t for t in times if t > last]
        if beyond:  # Breslow's H0 has no steps after the last training event: S(t | x) is carried, not estimated
            print(f"covfuse predict: --times {', '.join(f'{t:g}' for t in beyond)} lie(s) after the training split's "
                  f"last event ({last:g}); S(t | x) there is the value at {last:g}, not an estimate", file=sys.stderr)
    threshold = None
    if task_of(config.model.head).name == "binary":  # the run's decision threshold, chosen on its valid split
        from covfuse.training.results import recorded_threshold

        threshold = recorded_threshold(run_dir, config)
    module = load_module(checkpoint_path(run_dir, args.ckpt))
    state, encoder = run_state(module, state, run_dir)
    names = [spec["name"] for spec in encoder.specs]  # raw columns, as the training data spelt them
    # CelebA runs take 0/1 attribute values and an image CSV; every other source its raw values and a manifest.
    celeba = state.get("format", "celeba") == "celeba"
    files = _files(args, names, celeba) if args.images else None
    table, where = _table(args, names, celeba) if args.csv_file else (None, None)
    predicted, values, marks = predict_rows(module, state, encoder, files=files, table=table, where=where,
                                            strict=args.strict, extrapolate=args.extrapolate,
                                            batch_size=args.batch_size, accelerator=args.accelerator,
                                            precision=precision, threshold=None if threshold is None else threshold["value"])
    header = ["image", *names, *predicted] if celeba else ["path", "subject", *names, *predicted]
    rows = [given + p for given, p in zip(_given(files, names, celeba) + _given(table, names, celeba), values)]
    check_finite(header, rows, args.ckpt)
    if threshold is not None:
        print(f"covfuse predict: {predicted[-1]} is the positive class where {predicted[0]} >= {threshold['value']:.6g} "
              f"(metrics.threshold {threshold['rule']}" + (f", chosen on the {threshold['split']} split" if
                                                           threshold.get("split") else "") + ")", file=sys.stderr)
    if times is not None:
        from covfuse.training.survival_reference import add_survival_columns

        header, rows = add_survival_columns(reference, header, rows, times)
    if args.csv_file:  # a table: one row outside the training range must not cost the others
        header = [*header, "out_of_range"]
        rows = [[*row, "; ".join(marks.get(i, []))] for i, row in enumerate(rows)]
        if marks and not args.extrapolate:
            print(f"covfuse predict: {len(marks)} of {len(rows)} row(s) hold covariate values outside what training "
                  "saw (the model extrapolates there): marked in the out_of_range column; --strict refuses them",
                  file=sys.stderr)
    out = csv.writer(sys.stdout, lineterminator="\n")  # written only once everything succeeded
    out.writerow(header)
    out.writerows(rows)
    return 0


def check_finite(header: list[str], rows: list[list[str]], ckpt: str) -> None:
    """Never print NaN predictions (weights that diverged): RunDiverged, one line, exit status 1."""
    columns = [j for j, name in enumerate(header) if name.startswith(("P(", "predicted_", "S@")) or name == "risk"]
    bad = [row for row in rows if any(_nonfinite(row[j]) for j in columns)]
    if bad:
        from covfuse.errors import RunDiverged

        raise RunDiverged(f"the model's output is NaN/Inf for {len(bad)} of {len(rows)} file(s) (first: {bad[0][0]}); "
                          f"nothing printed. The checkpoint ({ckpt}) holds NaN weights or the file NaN values: try "
                          "--ckpt best or last, and `covfuse data info` on the inputs")


def _nonfinite(cell: str) -> bool:
    """A number cell that is NaN/Inf; text (a multi-class head's predicted class name, an empty cell) is not."""
    try:
        return not math.isfinite(float(cell))
    except ValueError:
        return False


def image_table(source: Path, images: list[Path], rows: list[list[str]], names: list[str]):
    """A CelebA run's input as a table: image files with a row of covariate values each, read as the run
    read its JPEGs."""
    import numpy as np

    from covfuse.data.table import SampleTable

    ids = [str(p) for p in images]
    columns = {"subject": ids, "path": ids, **{n: [row[k] for row in rows] for k, n in enumerate(names)}}
    return SampleTable(source, ["subject", "path", *names], columns, list(images), np.asarray(ids, dtype=object),
                       np.full(len(images), -1, dtype=np.int8), np.arange(1, len(images) + 1, dtype=np.int64),
                       kind="image", format="celeba")


def _files(args, names: list[str], celeba: bool):
    """The FILE arguments with the --covariates values as a table (a CelebA run: every value a number)."""
    if celeba:
        values = parse_covariates(args.covariates, names)
        return image_table(Path("--covariates"), [Path(p) for p in args.images], [values] * len(args.images), names)
    from covfuse.data.readers.manifest import manifest_from_files

    given = split_covariates(args.covariates, names)
    return manifest_from_files(args.images, {n: given.get(n, "") for n in names})


def _table(args, names: list[str], celeba: bool):
    """The --csv table and how its rows are named in messages: a CelebA run's image CSV, or a manifest."""
    path = Path(args.csv_file)
    if celeba:
        images, rows = read_csv(path, names)
        return image_table(path, images, rows, names), lambda i: f"{path} row {i + 2}"
    from covfuse.data.readers.manifest import read_manifest

    manifest = read_manifest(path)
    return manifest, manifest.where


def _given(table, names: list[str], celeba: bool) -> list[list[str]]:
    """Per row of ``table`` (None: no rows) the cells printed before the prediction: the file (and its
    subject), then the covariate values as given (empty where missing)."""
    if table is None:
        return []
    from covfuse.data.table import is_missing

    columns = [table.columns[table.column(n)] for n in names]
    return [[str(table.files[i]), *([] if celeba else [str(table.subjects[i])]),
             *("" if is_missing(c[i]) else str(c[i]) for c in columns)] for i in range(len(table))]
