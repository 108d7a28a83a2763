"""`covfuse predict RUN FILE... --covariates A=1,B=0` (or `--csv FILE`): the run's prediction per file.

One path for every source (covfuse.training.predict.predict_table): the files and their raw
covariate values become a table, encoded by the run's saved encoder and read by the dataset
`covfuse test` uses with the run's saved preprocessing, so a file gets the probability `covfuse
test` wrote for it. CelebA runs take image files with 0/1 attribute values (or a CSV with columns
image,<covariates>) and print `image,<covariates>,<prediction>`; runs on a manifest or BIDS take
their files with raw values (or a manifest) and print `path,subject,<covariates>,<prediction>`.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from covfuse.cli._common import Parser
from covfuse.errors import UserError, suggest


def _parser() -> argparse.ArgumentParser:
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


def _value(name: str, text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: covariate {name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: covariate {name} is {text}; give a finite number")
    return value


def check_seen(names: list[str], row: list[float], seen: dict | None, where: str,
               marks: list[str] | None = None) -> None:
    """Refuse a covariate value the training split never held (e.g. CelebA's -1 where training saw 0/1);
    with ``marks`` (a table row), note it there instead."""
    for name, value in zip(names, row):
        info = (seen or {}).get(name)
        if not info:
            continue
        if marks is not None:
            if "values" in info and value not in info["values"]:
                marks.append(f"{name}={value:g} (training had {'/'.join(f'{v:g}' for v in info['values'])})")
            elif "min" in info and not info["min"] <= value <= info["max"]:
                marks.append(f"{name}={value:g} (training range {info['min']:g}..{info['max']:g})")
            continue
        if "values" in info and value not in info["values"]:
            allowed = ", ".join(f"{v:g}" for v in info["values"])
            hint = " (covfuse maps CelebA's -1/1 to 0/1)" if value == -1 and set(info["values"]) <= {0.0, 1.0} else ""
            raise UserError(f"{where}: {name}={value:g} was never seen in training, which had {name} in "
                            f"{{{allowed}}}{hint}; give one of those values")
        if "min" in info and not info["min"] <= value <= info["max"]:
            raise UserError(f"{where}: {name}={value:g} lies outside the training range "
                            f"[{info['min']:g}, {info['max']:g}]; the model would extrapolate")


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


def parse_covariates(text: str, names: list[str]) -> list[float]:
    """``"Male=1,Young=0"`` -> numbers in the order of ``names`` (all required)."""
    given = split_covariates(text, names)
    missing = [n for n in names if n not in given]
    if missing:
        example = ",".join(f"{n}=1" for n in names)
        raise UserError(f"--covariates: missing {', '.join(missing)} (the model takes {', '.join(names)}; e.g. --covariates {example})")
    return [_value(n, given[n], "--covariates") for n in names]


def read_csv(path: Path, names: list[str]) -> tuple[list[Path], list[list[float]]]:
    """Image paths and covariate rows from a CSV with columns image,<names> (any order, extra columns ignored)."""
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
            rows.append([_value(n, (row[header[n.lower()]] or "").strip(), f"{path}:{line}") for n in names])
    if not images:
        raise UserError(f"{path}: no rows")
    return images, rows


def main(argv: list[str]) -> int:
    args = _parser().parse_intermixed_args(argv)  # options may come between RUN and the images
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

    run_dir = find_run(args.run, args.runs_dir)
    config = cfgmod.load(run_dir / "config.yaml")
    precision = config.trainer.precision  # as `covfuse test` evaluates
    state = read_state(run_dir)
    if state is None and str(config.data.root).lower().endswith((".csv", ".tsv")):
        raise UserError(f"{run_dir}: no {STATE_FILE} (the covariate encoder a run writes when training starts); "
                        "train the run again with `covfuse fit`")
    times = reference = None
    if args.times is not None:  # checked before any image is read
        from covfuse.training.survival_curves import Reference, parse_times

        times = parse_times(args.times)
        if config.model.head != "survival":
            raise UserError(f"--times gives survival probabilities; {run_dir} has head {config.model.head}, not survival")
        reference = Reference.load(run_dir)
        last = float(reference.baseline.times[-1]) if len(reference.baseline.times) else 0.0
        beyond = [t for t in times if t > last]
        if beyond:  # Breslow's H0 has no steps after the last training event: S(t | x) is carried, not estimated
            print(f"covfuse predict: --times {', '.join(f'{t:g}' for t in beyond)} lie(s) after the training split's "
                  f"last event ({last:g}); S(t | x) there is the value at {last:g}, not an estimate", file=sys.stderr)
    module = load_module(checkpoint_path(run_dir, args.ckpt))
    # CelebA runs take raw 0/1 attributes and an image CSV; every other source goes through its
    # table: the saved encoder and preprocessing, as `covfuse test` reads the data.
    celeba = state is None or state.get("format") == "celeba"
    predict = _predict_images if celeba else _predict_volumes
    header, rows, marks = predict(args, run_dir, module, state, precision)
    check_finite(header, rows, args.ckpt)
    if times is not None:
        from covfuse.training.survival_curves import add_survival_columns

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


def image_table(images: list[Path], rows: list[list[float]], names: list[str], fmt: str):
    """A table of image files with a row of covariate values each (the run's ``fmt``, so they are read as
    training read its files); a folder or a missing file is one line naming it."""
    import numpy as np

    from covfuse.data.table import SampleTable

    folders = [p for p in images if p.is_dir()]
    if folders:
        raise UserError(f"{folders[0]}: a folder, not an image file; give image files (e.g. {folders[0]}/<name>)")
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]}: no such image file" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    ids = [str(p) for p in images]
    columns = {"subject": ids, "path": ids, **{n: [repr(float(row[k])) for row in rows] for k, n in enumerate(names)}}
    return SampleTable(Path("--covariates"), ["subject", "path", *names], columns, list(images),
                       np.asarray(ids, dtype=object), np.full(len(images), -1, dtype=np.int8),
                       np.arange(1, len(images) + 1, dtype=np.int64), kind="image", format=fmt)


def _predict_images(args, run_dir, module, state, precision) -> tuple[list[str], list[list[str]]]:
    from covfuse.data.table import CovariateEncoder
    from covfuse.training.predict import encoder_of, predict_table, prediction_columns

    names = list(module.hparams.covariates)
    images: list[Path] = []
    rows: list[list[float]] = []
    if args.images:
        values = parse_covariates(args.covariates, names)
        images += [Path(p) for p in args.images]
        rows += [values] * len(args.images)
    if args.csv_file:
        more_images, more_rows = read_csv(Path(args.csv_file), names)
        images += more_images
        rows += more_rows
    seen = module.hparams.get("covariate_values")
    marks: dict[int, list[str]] = {}
    for i, row in enumerate(rows):
        table = i >= len(args.images)
        if table and not args.strict:
            marks[i] = []
            check_seen(names, row, seen, "", marks[i])
        elif not args.extrapolate:
            check_seen(names, row, seen, "--covariates" if not table else f"{args.csv_file} row {i - len(args.images) + 2}")
    if state is None:  # a run from before data_state.json: 0/1 attributes fed as they are, its size and preset
        state = {"format": "celeba", "preprocessing": {"size": module.hparams.image_size, "preset": module.hparams.preset}}
        encoder = CovariateEncoder([{"name": n, "kind": "binary", "mean": 0.0, "missing": False} for n in names])
    else:
        encoder = encoder_of(module, state, run_dir)
    table = image_table(images, rows, names, state.get("format", "celeba"))
    values = predict_table(module, state, table, encoder, batch_size=args.batch_size, accelerator=args.accelerator,
                           precision=precision)
    header, predicted = prediction_columns(module, values)
    return (["image", *names, *header], [[str(image), *(f"{v:g}" for v in row), *p]
                                         for image, row, p in zip(images, rows, predicted)],
            {i: m for i, m in marks.items() if m})


def _predict_volumes(args, run_dir, module, state, precision) -> tuple[list[str], list[list[str]]]:
    """Volume files with --covariates and/or a manifest (--csv), checked completely before any volume is read."""
    import numpy as np

    from covfuse.data.readers.manifest import manifest_from_files, read_manifest
    from covfuse.data.table import is_missing
    from covfuse.training.predict import prediction_columns
    from covfuse.training.predict import check_covariates, check_files, encoder_of, predict_table

    encoder = encoder_of(module, state, run_dir)
    names = [spec["name"] for spec in encoder.specs]  # raw columns, as the training manifest spelt them
    seen = module.hparams.get("covariate_values")
    parts = []  # (manifest, how its rows are named in errors)
    if args.images:
        given = split_covariates(args.covariates, names)
        manifest = manifest_from_files(args.images, {n: given.get(n, "") for n in names})
        check_covariates(manifest, encoder, seen, lambda i: "--covariates", extrapolate=args.extrapolate)
        parts.append((manifest, lambda i: ""))  # volume_shape's messages name the file
    marks: dict[int, list[str]] = {}
    if args.csv_file:
        manifest = read_manifest(args.csv_file)
        table_marks: dict[int, list[str]] = {}
        check_covariates(manifest, encoder, seen, manifest.where, extrapolate=args.extrapolate,
                         marks=None if args.strict else table_marks)
        offset = len(parts[0][0]) if parts else 0
        marks = {offset + i: m for i, m in table_marks.items()}
        parts.append((manifest, manifest.where))
    for manifest, where in parts:
        check_files(manifest, where)
    rows, values = [], []
    for manifest, _ in parts:
        values.append(predict_table(module, state, manifest, encoder, batch_size=args.batch_size,
                                      accelerator=args.accelerator, precision=precision))
        columns = [manifest.columns[manifest.column(n)] for n in names]
        rows += [[str(manifest.files[i]), str(manifest.subjects[i]), *("" if is_missing(c[i]) else c[i] for c in columns)]
                 for i in range(len(manifest))]
    header, predicted = prediction_columns(module, np.concatenate(values), state.get("classes"))
    return ["path", "subject", *names, *header], [row + p for row, p in zip(rows, predicted)], marks
