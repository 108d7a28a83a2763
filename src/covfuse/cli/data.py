"""`covfuse data info|synth|synth3d|cache|verify`: inspect, synthesise, cache and verify any data source."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from covfuse.cli._common import Parser
from covfuse.errors import UserError

# The release's md5 checksums, as listed in torchvision's CelebA.file_list
# (torchvision/datasets/celeba.py, torchvision 0.19-0.29); the text files are the CRLF originals.
OFFICIAL_MD5 = {
    "img_align_celeba.zip": "00d2c5bc6d35e252742224ab0c1e8fcb",
    "list_attr_celeba.txt": "75e246fa4810816ffd6ee81facbd244c",
    "identity_CelebA.txt": "32bd1bd63d3c78cd57e08160ec5ed1e2",
    "list_bbox_celeba.txt": "00566efa6fedff7a56946cd1c10f1c16",
    "list_landmarks_align_celeba.txt": "cc24ecafdb5b50baae59b03474781f8c",
    "list_eval_partition.txt": "d32c9cbf5e040fd4025c592c306e6668",
}
OPTIONAL_MD5 = ("img_align_celeba.zip", "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def _names(text: str | None) -> list[str]:
    """``A,B`` or ``[A,B]`` (the list syntax of every command) -> ["A", "B"]."""
    text = (text or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [n.strip() for n in text.split(",") if n.strip()]


# ---------------------------------------------------------------------------------------- info
def info_summary(meta, target: str | None = None, covariates: list[str] | None = None) -> dict:
    """The `data info` JSON: num_images, splits, attributes (+ target/covariates when asked)."""
    from covfuse.data.readers.celeba_release import SPLIT_NAMES

    counts = np.bincount(meta.split, minlength=3)
    rates = meta.attrs.mean(axis=0) if len(meta) else np.zeros(len(meta.attr_names))
    out: dict = {
        "kind": "image",
        "format": "celeba",
        "num_images": len(meta),
        "num_samples": len(meta),
        "num_subjects": int(len(np.unique(meta.identity))),
        "splits": {name: int(c) for name, c in zip(SPLIT_NAMES, counts)},
        "attributes": {name: round(float(r), 6) for name, r in zip(meta.attr_names, rates)},
        "columns": {name: {"type": "binary", "positive_rate": round(float(r), 6)}
                    for name, r in zip(meta.attr_names, rates)},
        "shape": None,
    }
    first = meta.image_dir / meta.filenames[0] if len(meta) else None
    if first is not None and first.is_file():
        from PIL import Image

        try:
            with Image.open(first) as img:
                out["shape"] = [img.height, img.width, len(img.getbands())]
        except OSError:
            pass  # `covfuse data verify` reports unreadable images
    if target is None and not covariates:
        return out
    if target is None:
        raise UserError("--covariates needs --target (the covariates are summarised against the target)")
    y, c, sel = meta.select(target, covariates or [])

    def rate(values, mask=None):
        values = values if mask is None else values[mask]
        return round(float(values.mean()), 6) if len(values) else None

    out["identities"] = int(len(np.unique(meta.identity)))
    out["target"] = {
        "name": sel.target,
        "positive_rate": {"all": rate(y), **{s: rate(y, meta.split == i) for i, s in enumerate(SPLIT_NAMES)}},
    }
    out["covariates"] = {
        name: {
            "positive_rate": rate(c[:, j]),
            "target_rate_given": {str(v): rate(y, c[:, j] == v) for v in (0, 1)},
            "count_given": {str(v): int((c[:, j] == v).sum()) for v in (0, 1)},
        }
        for j, name in enumerate(sel.covariates)
    }
    return out


def _print_info(meta, summary: dict) -> None:
    from covfuse.data.readers.celeba_release import SPLIT_NAMES

    n, sp = summary["num_images"], summary["splits"]
    print(f"CelebA folder {meta.root}: {n:,} images, {len(np.unique(meta.identity)):,} identities")
    print("splits: " + " | ".join(f"{s} {sp[s]:,} ({sp[s] / max(n, 1):.1%})" for s in SPLIT_NAMES))
    role = {}
    if "target" in summary:
        role[summary["target"]["name"]] = "target"
        role.update({c: "covariate" for c in summary["covariates"]})
    print()
    print(f"{'attribute':<22}{'all':>7}{'train':>8}{'valid':>8}{'test':>8}")
    for j, name in enumerate(meta.attr_names):
        per = [meta.attrs[meta.split == i, j].mean() if sp[s] else float("nan") for i, s in enumerate(SPLIT_NAMES)]
        mark = f"  <- {role[name]}" if name in role else ""
        print(f"{name:<22}{summary['attributes'][name]:>7.3f}" + "".join(f"{p:>8.3f}" for p in per) + mark)
    if "target" in summary:
        t = summary["target"]
        print()
        print(f"target {t['name']}: positive rate {t['positive_rate']['all']:.3f}")
        for name, cv in summary["covariates"].items():
            given = ", ".join(
                f"{name}={v}: {cv['target_rate_given'][v] if cv['target_rate_given'][v] is not None else float('nan'):.3f}"
                f" (n={cv['count_given'][v]:,})"
                for v in ("0", "1")
            )
            print(f"  {t['name']} rate given {given}")


def volume_info(path: str, target: str | None = None, covariates: list[str] | None = None,
                categorical: list[str] | None = None, check_volumes: bool = True) -> dict:
    """The `data info` JSON of a manifest or BIDS dataset: kind, format, num_subjects, num_samples
    (num_volumes for volumes), splits, columns, shape.

    Every file's header is read (NIfTI: nibabel, no voxels; 2D: the decoder's header read), so a
    missing, unreadable or wrong-dimensional file is reported with its row.
    """
    from collections import Counter

    from covfuse.data.readers import read_table
    from covfuse.data.layout import layout_name
    from covfuse.data.table import RESERVED, SPLIT_NAMES, column_kind, is_missing, subject_split

    table = read_table(path, check_files=True) if str(path).lower().endswith((".csv", ".tsv")) else read_table(path)
    for name in [*([target] if target else []), *(covariates or [])]:
        table.column(name)  # unknown names: a UserError with a suggestion
    split = subject_split(table, seed=0)
    columns = {}
    for name in table.header:
        values = table.columns[name]
        kind = name if name in RESERVED else column_kind(table, name, categorical or ())
        entry = {"type": kind, "missing": sum(is_missing(v) for v in values)}
        if kind == "categorical":
            entry["levels"] = dict(sorted(Counter(v for v in values if not is_missing(v)).items()))
        elif kind == "numeric":
            numbers = [float(v) for v in values if not is_missing(v)]
            entry.update({"min": min(numbers), "max": max(numbers)} if numbers else {})
        columns[name] = entry
    shapes: Counter = Counter()
    layouts: Counter = Counter()
    nonfinite: list = []
    if check_volumes:
        headers = [file_header(table, i) for i in range(len(table))]
        shapes = Counter(shape for shape, _ in headers)
        layouts = Counter((info["channels"], info["bits"]) for _, info in headers if info)
        from covfuse.data.samples import nonfinite as find_nonfinite

        nonfinite = find_nonfinite(table)
    noun = "num_volumes" if table.kind == "volume" else "num_images"
    return {
        "kind": table.kind,
        "format": table.format,
        "manifest": str(table.path),
        "num_subjects": int(len(set(table.subjects.tolist()))),
        "num_samples": len(table),
        noun: len(table),
        "splits": {name: int((split == k).sum()) for k, name in enumerate(SPLIT_NAMES)},
        "split_source": "split column" if table.has_split else
                        "none in the data: subjects shuffled 70/15/15 by data.split_seed (default 0)",
        "columns": columns,
        "shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "shapes": {"x".join(map(str, k)): v for k, v in shapes.items()},
        "layouts": {layout_name(*k): v for k, v in sorted(layouts.items())},
        "read_as": layout_name(3 if any(c == 3 for c, _ in layouts) else 1,
                               16 if any(b == 16 for _, b in layouts) else 8) if layouts else None,
        "nonfinite": {"files": len(nonfinite), "voxels": sum(n for _, n in nonfinite),
                      "first": str(table.columns["path"][nonfinite[0][0]]) if nonfinite else None},
    }


def file_shape(table, row: int) -> tuple:
    """A file's shape from its header: (X, Y, Z) for a volume, (H, W) or (H, W, C) for a 2D image."""
    return file_header(table, row)[0]


def file_header(table, row: int) -> tuple[tuple, dict | None]:
    """(shape as :func:`file_shape`, the 2D decoder's info dict: format, bits, channels; None for volumes)."""
    file = table.files[row]
    if table.kind == "volume":
        from covfuse.data.decoders.nifti import volume_shape

        return volume_shape(file, table.where(row)), None
    from covfuse.data.decode import CorruptImage

    try:
        from covfuse.data.decoders import read_pixels
    except ImportError:  # pragma: no cover - a tree without the multi-format decoders
        from PIL import Image

        def read_pixels(path):
            with Image.open(path) as img:
                return np.asarray(img), {}
    try:
        pixels, info = read_pixels(file)
    except CorruptImage as exc:
        raise UserError(f"{table.where(row)}: {table.columns['path'][row]}: cannot decode the image ({exc.reason}); "
                        "replace the file or remove its row") from None
    return tuple(int(v) for v in pixels.shape), info


def _print_volume_info(summary: dict) -> None:
    noun = "volumes" if summary["kind"] == "volume" else "images"
    print(f"{summary['format']} {summary['manifest']}: {summary['num_samples']:,} {noun} of "
          f"{summary['num_subjects']:,} subjects")
    sp = summary["splits"]
    print("splits: " + " | ".join(f"{k} {v:,}" for k, v in sp.items()) + f"  ({summary['split_source']})")
    shape = summary["shape"]
    print("shape: " + ("x".join(map(str, shape)) if shape else ", ".join(f"{k} ({v})" for k, v in summary["shapes"].items())))
    layouts = summary.get("layouts") or {}
    if layouts:
        mixed = f"; mixed: all are read as {summary['read_as']}, losing nothing" if len(layouts) > 1 else ""
        print("layouts: " + ", ".join(f"{k} ({v})" for k, v in layouts.items()) + mixed)
    bad = summary.get("nonfinite") or {}
    if bad.get("files"):
        print(f"non-finite: {bad['files']:,} file(s) hold {bad['voxels']:,} NaN/Inf voxel(s) (first: {bad['first']}); "
              "data.nonfinite zero (the default) sets them to 0 before normalisation, refuse stops")
    print()
    print(f"{'column':<20}{'type':<13}{'missing':>8}  values")
    for name, c in summary["columns"].items():
        if c["type"] == "categorical":
            values = ", ".join(f"{k} {v}" for k, v in list(c["levels"].items())[:6])
        elif c["type"] == "numeric" and "min" in c:
            values = f"{c['min']:g} .. {c['max']:g}"
        else:
            values = ""
        print(f"{name:<20}{c['type']:<13}{c['missing']:>8}  {values}")


def cmd_info(args: argparse.Namespace) -> int:
    from covfuse.data.readers.celeba_release import read_celeba

    from covfuse.data.readers import source_format

    if source_format(args.root) != "celeba":
        summary = volume_info(args.root, args.target, _names(args.covariates), _names(args.categorical),
                              check_volumes=not args.skip_images)
        if args.format == "json":
            print(json.dumps(summary, indent=2))
        else:
            _print_volume_info(summary)
        return 0

    meta = read_celeba(args.root, check_images=not args.skip_images)
    summary = info_summary(meta, args.target, _names(args.covariates))
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        _print_info(meta, summary)
    return 0


# --------------------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from covfuse.data.twins.faces import parse_image_size, write_synth

    if args.n < 3:
        raise UserError(f"--n must be at least 3 (one image per split), got {args.n}")
    start = time.perf_counter()
    out = write_synth(
        args.out, n=args.n, seed=args.seed, effect=args.effect, image_size=parse_image_size(args.image_size),
        noise=args.noise, images=not args.labels_only, overwrite=args.overwrite, workers=args.workers,
        format=args.format,
    )
    card = json.loads((out / "synth.json").read_text())
    acc = card["bayes_accuracy"]
    print(f"wrote {args.n:,} synthetic images to {out} in {time.perf_counter() - start:.1f} s ({out / 'README.txt'})")
    print(f"rule: {card['rule']}")
    print(
        "Bayes accuracy: image+covariates {image_and_covariates:.3f}, image only {image_only:.3f}, "
        "covariates only {covariates_only:.3f}".format(**acc)
    )
    return 0


def cmd_synth3d(args: argparse.Namespace) -> int:
    from covfuse.data.twins.brains import write_synth3d

    start = time.perf_counter()
    out = write_synth3d(args.out, n=args.n, seed=args.seed, effect=args.effect, size=args.size,
                        num_classes=args.classes, noise=args.noise, overwrite=args.overwrite, progress=True,
                        layout=args.format, survival=args.survival)
    card = json.loads((out / "synth.json").read_text())
    acc = card["bayes_accuracy"]
    print(f"wrote {args.n:,} synthetic volumes ({args.size}^3) to {out} in {time.perf_counter() - start:.1f} s "
          f"({out / 'README.txt'}; " + (f"BIDS dataset, {out / 'participants.tsv'})" if args.format == "bids"
                                        else f"manifest {out / 'manifest.csv'})"))
    print(f"rule: {card['rule']}")
    print(
        "Bayes accuracy: image+covariates {image_and_covariates:.3f}, image only {image_only:.3f}, "
        "covariates only {covariates_only:.3f}".format(**acc)
    )
    if args.survival:
        c = card["survival"]["c_index"]
        print(f"time to conversion: {card['survival']['rule']}")
        print(f"C-index: true risk {c['true_risk']:.3f}, image+covariates {c['image_and_covariates']:.3f}, "
              f"image only {c['image_only']:.3f}, covariates only {c['covariates_only']:.3f}")
    return 0


# --------------------------------------------------------------------------------------- cache
def cmd_cache(args: argparse.Namespace) -> int:
    from covfuse.data.cache import build_cache
    from covfuse.data.readers import read_table

    _setup_logging()
    meta = read_table(args.root)
    if meta.kind != "image":
        raise UserError(f"{args.root}: `covfuse data cache` builds the 2D image cache; volumes are cached by the first "
                        "run with data.cache: build (it knows the preprocessing)")
    start = time.perf_counter()
    cache = build_cache(meta, args.size, args.preset, cache_dir=args.cache_dir, workers=args.workers, rebuild=args.rebuild)
    took = time.perf_counter() - start
    gib = cache.path.stat().st_size / 2**30
    print(f"cache {cache.path}: {len(cache):,} images, {cache.size} px, {cache.preset}, {gib:.2f} GiB ({took:.1f} s)")
    return 0


# -------------------------------------------------------------------------------------- verify
def _decode_chunk(files: list[str]) -> list[tuple[str, str]]:
    """Worker: fully decode each file; return (file, error) for those that fail."""
    from PIL import Image

    bad = []
    for file in files:
        try:
            with Image.open(file) as img:
                img.load()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a finding, not a crash
            bad.append((file, f"{type(exc).__name__}: {exc}"))
    return bad


def verify_checksums(base: Path) -> list[str]:
    """Compare the text files (and the zip, when present) with the release's md5; return problems."""
    from covfuse.data.cache import md5sum

    problems = []
    for name, expected in OFFICIAL_MD5.items():
        path = base / name
        if not path.is_file():
            if name in OPTIONAL_MD5:
                print(f"  {name:<34} absent (optional)")
                continue
            problems.append(f"{path} is missing")
            print(f"  {name:<34} MISSING")
            continue
        got = md5sum(path)
        if got == expected:
            print(f"  {name:<34} ok (md5 {got})")
            continue
        note = ""
        if path.suffix == ".txt":
            data = path.read_bytes()
            import hashlib

            if hashlib.md5(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")).hexdigest() == expected:
                note = " (same content with LF line endings; torchvision rejects LF copies, covfuse accepts them)"
        print(f"  {name:<34} MISMATCH (md5 {got}, official {expected}){note}")
        problems.append(f"{path} differs from the official release{note}")
    return problems


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from covfuse.data._workers import default_workers, run_chunks
    from covfuse.data.readers.celeba_release import read_celeba

    from covfuse.data.readers import source_format

    if source_format(args.root) != "celeba":
        return verify_table(args)
    meta = read_celeba(args.root)
    print(f"{meta.root}: format ok ({len(meta):,} images listed, all present)")
    print("checksums (official values from torchvision.datasets.CelebA.file_list):")
    problems = verify_checksums(meta.root)
    files = [str(meta.image_dir / f) for f in meta.filenames]
    chunk = 512
    tasks = [(files[i : i + chunk],) for i in range(0, len(files), chunk)]
    workers = default_workers(len(files)) if args.workers is None else args.workers
    bad: list[tuple[str, str]] = []
    with tqdm(total=len(files), desc="decoding images", unit="img") as bar:
        for i, failures in run_chunks(_decode_chunk, tasks, workers):
            bad += failures
            bar.update(len(tasks[i][0]))
    for file, err in sorted(bad)[:20]:
        print(f"  cannot decode {file}: {err}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    print(f"images: {len(files) - len(bad):,} of {len(files):,} decode")
    if bad:
        problems.append(f"{len(bad)} image(s) do not decode (first: {sorted(bad)[0][0]})")
    if problems:
        raise UserError(f"verification failed: {problems[0]}" + (f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""))
    print("verified: the official release, intact")
    return 0


def verify_table(args: argparse.Namespace) -> int:
    """`data verify` of a manifest or BIDS dataset: the table validates and every file decodes in full
    (2D: the decoder training uses; NIfTI: every voxel, and NaN/Inf voxels counted)."""
    from tqdm import tqdm

    from covfuse.data._workers import default_workers, run_chunks
    from covfuse.data.chunks import unreadable
    from covfuse.data.readers import read_table

    table = read_table(args.root)
    noun = "volumes" if table.kind == "volume" else "images"
    print(f"{table.path}: format ok ({len(table):,} {noun} listed, all present)")
    files = [str(f) for f in table.files]
    chunk = 64 if table.kind == "volume" else 512
    tasks = [(files[i: i + chunk],) if table.kind == "volume" else (files[i: i + chunk], True)
             for i in range(0, len(files), chunk)]
    from covfuse.data.decoders.nifti import unreadable_volumes

    work = unreadable_volumes if table.kind == "volume" else unreadable
    workers = default_workers(len(files)) if args.workers is None else args.workers
    bad: list[tuple[str, str]] = []
    with tqdm(total=len(files), desc=f"decoding {noun}", unit=noun[:3]) as bar:
        for i, failures in run_chunks(work, tasks, workers):
            bad += failures
            bar.update(len(tasks[i][0]))
    row = {f: i for i, f in enumerate(files)}
    bad.sort(key=lambda item: row[item[0]])
    for file, reason in bad[:20]:
        print(f"  {table.where(row[file])}: cannot decode {file}: {reason}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    print(f"{noun}: {len(files) - len(bad):,} of {len(files):,} decode")
    if table.kind == "volume" and not bad:
        from covfuse.data.samples import nonfinite

        found = nonfinite(table)
        if found:
            print(f"non-finite: {len(found):,} file(s) hold {sum(n for _, n in found):,} NaN/Inf voxel(s) (first: "
                  f"{table.files[found[0][0]]}); data.nonfinite zero (the default) sets them to 0, refuse stops")
    if bad:
        file, reason = bad[0]
        more = f" (+{len(bad) - 1} more above)" if len(bad) > 1 else ""
        raise UserError(f"verification failed: {table.where(row[file])}: {file} does not decode ({reason}){more}; "
                        "replace the file or remove its row (`covfuse fit --skip_corrupt` trains without it)")
    print(f"verified: every file of {table.path} decodes")
    return 0


# -------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    from covfuse.data.twins.faces import EFFECTS
    from covfuse.data.decode import DEFAULT_PRESET, PRESETS

    parser = Parser(
        prog="covfuse data",
        description="Inspect, verify, cache or synthesise data. ROOT is a manifest CSV/TSV (2D images or NIfTI "
        "volumes), a BIDS folder (dataset_description.json), or a CelebA folder (img_align_celeba/ and the text "
        "files, or celeba/ holding them). Formats: docs/data.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("info", help="validate a manifest, BIDS dataset or CelebA folder and summarise it",
                       description="Validate any source (docs/data.md, 'Your own data'); every problem is reported with "
                       "its file and line. Prints counts, splits and, for CelebA, each attribute's positive rate; for a "
                       "manifest or BIDS dataset, each column's type and missing count and the file shapes.")
    p.add_argument("root", metavar="ROOT|MANIFEST.csv|BIDS")
    p.add_argument("--categorical", metavar="A,B", help="manifest: columns to treat as categorical even if numeric")
    p.add_argument("--target", metavar="NAME", help="also summarise this attribute as the target")
    p.add_argument("--covariates", metavar="A,B", help="covariates (A,B or [A,B]) to summarise against the target")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--skip_images", action="store_true", help="do not require every listed image to exist "
                   "(manifest: do not open every volume's header)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("synth", help="write a synthetic CelebA twin with a planted effect",
                       description="Write a synthetic twin in the release's exact format to OUT/celeba/, with a "
                       "data card OUT/README.txt and OUT/synth.json stating the rule and the exact Bayes accuracies.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--n", type=int, default=10_000, help="number of images (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    p.add_argument("--effect", choices=EFFECTS, default="planted",
                   help="planted: Attractive = Smiling if Young else not Eyeglasses; null: Attractive = Smiling")
    p.add_argument("--image_size", default="178x218", metavar="WxH", help="JPEG size (default: the release's 178x218)")
    p.add_argument("--noise", type=float, default=0.05, help="label flip probability (default: 0.05)")
    p.add_argument("--labels_only", action="store_true", help="write the text files but no JPEGs (fast; for statistics)")
    p.add_argument("--workers", type=int, default=1, help="processes drawing images (default: 1)")
    p.add_argument("--format", choices=("celeba", "manifest"), default="celeba",
                   help="celeba: the release's folder and text files (default); manifest: OUT/images/ + "
                   "OUT/manifest.csv (subject, path, split, 40 attributes as 0/1), as your own photos would be")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("synth3d", help="write a synthetic brain-MRI twin (NIfTI + manifest) on the MNI152 template",
                       description="Write NIfTI volumes built from nilearn's MNI152 template (no download), "
                       "OUT/manifest.csv, a data card OUT/README.txt and OUT/synth.json with the exact Bayes accuracies. "
                       "planted: the same atrophy means disease when young and ageing when old; null: age is irrelevant.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--n", type=int, default=600, help="number of subjects, one volume each (default: 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    p.add_argument("--effect", choices=("planted", "null"), default="planted", help="default: planted")
    p.add_argument("--size", type=int, default=64, help="cube side in voxels (default: 64)")
    p.add_argument("--classes", type=int, choices=(2, 3), default=2, help="2: CN/AD, 3: CN/MCI/AD (default: 2)")
    p.add_argument("--noise", type=float, default=0.05, help="label flip probability (default: 0.05)")
    p.add_argument("--format", choices=("manifest", "bids"), default="manifest",
                   help="manifest: OUT/manifest.csv + volumes/; bids: a BIDS dataset (participants.tsv, "
                   "sub-*/anat/*_T1w.nii.gz) without a split column (default: manifest)")
    p.add_argument("--survival", action="store_true",
                   help="add time and event columns: time to conversion with a planted hazard (docs/volumes.md)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists and is not empty")
    p.set_defaults(func=cmd_synth3d)

    p = sub.add_parser("cache", help="decode all images once into a uint8 memmap for fast epochs",
                       description="Decode, crop and resize every image into a uint8 (N,3,S,S) memmap under "
                       "ROOT/.covfuse-cache/ (or --cache_dir DIR; fit reads it with data.cache_dir DIR). Atomic and resumable: rerun after an interruption.")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--size", type=int, required=True, help="side S of the square images in pixels")
    p.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET, help=f"image preset (default: {DEFAULT_PRESET})")
    p.add_argument("--cache_dir", metavar="DIR", help="where to write the cache (default: ROOT/.covfuse-cache)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per 5,000 images, up to the available CPUs)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a valid cache exists")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("verify", help="check that every file decodes (CelebA: also the official md5 checksums)",
                       description="Validate the source and fully decode every file it lists: a manifest or BIDS "
                       "dataset with the decoder training uses (PNG, JPEG, TIFF, DICOM, NIfTI), naming each bad file "
                       "and its row; a CelebA folder also against the official release's md5 checksums (as listed "
                       "by torchvision).")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per 5,000 images, up to the available CPUs)")
    p.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed the message
        return int(exc.code or 0)
    return int(args.func(args) or 0)
