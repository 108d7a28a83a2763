"""`covfuse predict RUN IMAGE... --covariates Male=1,Young=0` (or `--csv FILE`): P(target) per image.

Images go through the same preset and size as in training (covfuse.data.transforms.load_image,
which the dataset and the cache use too), so a CelebA image gets the probability `covfuse test`
wrote for it. Output is CSV on stdout: image, the covariates, probability.
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
    p = Parser(prog="covfuse predict", description="Print P(target = 1) for images with given covariates.")
    p.add_argument("run", help="run name (under --runs_dir) or path to a run folder")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--covariates", default="", help="covariate values for the IMAGE arguments, e.g. Male=1,Young=0")
    p.add_argument("--csv", dest="csv_file", default=None,
                   help="CSV with columns image,<covariate names> (image paths relative to the CSV's folder)")
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


def check_seen(names: list[str], row: list[float], seen: dict | None, where: str) -> None:
    """Refuse a covariate value the training split never held (e.g. CelebA's -1 where training saw 0/1)."""
    for name, value in zip(names, row):
        info = (seen or {}).get(name)
        if not info:
            continue
        if "values" in info and value not in info["values"]:
            allowed = ", ".join(f"{v:g}" for v in info["values"])
            hint = " (covfuse maps CelebA's -1/1 to 0/1)" if value == -1 and set(info["values"]) <= {0.0, 1.0} else ""
            raise UserError(f"{where}: {name}={value:g} was never seen in training, which had {name} in "
                            f"{{{allowed}}}{hint}; give one of those values")
        if "min" in info and not info["min"] <= value <= info["max"]:
            raise UserError(f"{where}: {name}={value:g} lies outside the training range "
                            f"[{info['min']:g}, {info['max']:g}]; the model would extrapolate")


def parse_covariates(text: str, names: list[str]) -> list[float]:
    """``"Male=1,Young=0"`` (or ``[Male=1,Young=0]``) -> values in the order of ``names`` (case-insensitive; all required)."""
    lower = {n.lower(): n for n in names}
    given: dict[str, float] = {}
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
        given[lower[key.lower()]] = _value(key, value.strip(), "--covariates")
    missing = [n for n in names if n not in given]
    if missing:
        example = ",".join(f"{n}=1" for n in names)
        raise UserError(f"--covariates: missing {', '.join(missing)} (the model takes {', '.join(names)}; e.g. --covariates {example})")
    return [given[n] for n in names]


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
    from covfuse.training import config as cfgmod
    from covfuse.training.predict import predict_images
    from covfuse.training.run import checkpoint_path, find_run, load_module

    run_dir = find_run(args.run, args.runs_dir)
    precision = cfgmod.load(run_dir / "config.yaml").trainer.precision  # as `covfuse test` evaluates
    module = load_module(checkpoint_path(run_dir, args.ckpt))
    names = list(module.hparams.covariates)
    images: list[Path] = []
    rows: list[list[float]] = []
    if args.images:
        values = parse_covariates(args.covariates, names)
        images += [Path(p) for p in args.images]
        rows += [values] * len(args.images)
    elif args.covariates:
        raise UserError("--covariates applies to IMAGE arguments; with --csv the covariates come from its columns")
    if args.csv_file:
        more_images, more_rows = read_csv(Path(args.csv_file), names)
        images += more_images
        rows += more_rows
    seen = module.hparams.get("covariate_values")
    for i, row in enumerate(rows):
        check_seen(names, row, seen, "--covariates" if i < len(args.images) else f"{args.csv_file} row {i - len(args.images) + 2}")
    probs = predict_images(module, images, rows, batch_size=args.batch_size, accelerator=args.accelerator,
                           precision=precision)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["image", *names, f"P({module.hparams.target})"])
    for image, row, p in zip(images, rows, probs):
        out.writerow([str(image), *(f"{v:g}" for v in row), f"{p:.6f}"])
    return 0
