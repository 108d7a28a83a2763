"""`covfuse data info|show|synth|synth3d|cache|verify`: parses the arguments and prints; covfuse.data does the work
(inspecting: covfuse.data.inspect; what the network sees: covfuse.data.show; decoding every file:
covfuse.data.samples.undecodable)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from covfuse.cli._common import Parser
from covfuse.errors import UserError


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
def _print_info(summary: dict, rates: dict[str, dict[str, float]], root) -> None:
    """A CelebA folder's summary (:func:`covfuse.data.inspect.celeba_info`) and per-split rates as text."""
    n, sp = summary["num_images"], summary["splits"]
    print(f"CelebA folder {root}: {n:,} images, {summary['num_subjects']:,} identities")
    print("splits: " + " | ".join(f"{s} {c:,} ({c / max(n, 1):.1%})" for s, c in sp.items()))
    role = {}
    if "target" in summary:
        role[summary["target"]["name"]] = "target"
        role.update({c: "covariate" for c in summary["covariates"]})
    print()
    print(f"{'attribute':<22}{'all':>7}{'train':>8}{'valid':>8}{'test':>8}")
    for name, rate in summary["attributes"].items():
        mark = f"  <- {role[name]}" if name in role else ""
        print(f"{name:<22}{rate:>7.3f}" + "".join(f"{p:>8.3f}" for p in rates[name].values()) + mark)
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


def _print_table_info(summary: dict) -> None:
    """A manifest's or BIDS dataset's summary (:func:`covfuse.data.inspect.table_info`) as text."""
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
    from covfuse.data.inspect import celeba_info, split_rates, table_info
    from covfuse.data.readers import source_format
    from covfuse.data.readers.celeba_release import read_celeba

    if source_format(args.root) != "celeba":
        summary = table_info(args.root, args.target, _names(args.covariates), _names(args.categorical),
                             check_files=not args.skip_images)
        if args.format == "json":
            print(json.dumps(summary, indent=2))
        else:
            _print_table_info(summary)
        return 0

    meta = read_celeba(args.root, check_images=not args.skip_images)
    summary = celeba_info(meta, args.target, _names(args.covariates))
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        _print_info(summary, split_rates(meta), meta.root)
    return 0


# ---------------------------------------------------------------------------------------- show
def show_settings(args: argparse.Namespace):
    """The preprocessing `data show` applies: a run config's data section (--config; default: fit's defaults),
    then the flags given."""
    from covfuse.data.samples import settings
    from covfuse.training import config as cfgmod

    data = cfgmod.load(args.config).data if args.config else cfgmod.DataConfig()
    for key in ("image_size", "preset", "geometry", "intensity", "spacing"):
        if getattr(args, key) is not None:
            setattr(data, key, getattr(args, key))
    return settings(data)


def cmd_show(args: argparse.Namespace) -> int:
    from covfuse.data.show import show

    s = show_settings(args)
    done = show(args.source, args.out, s, rows=args.rows, ids=_names(args.ids) or None,
                columns=_names(args.covariates) or None, overwrite=args.overwrite)
    if done["out"].lower().endswith(".npy"):
        print(f"wrote {done['out']}: the decoded array of {done['ids'][0]} (float32, shape "
              f"{'x'.join(map(str, done['shape']))}{', RAS' if done['kind'] == 'volume' else ''}, before resizing)")
    else:
        what = (f"{s.size}^3 voxels, {s.geometry}, {s.intensity}" if done["kind"] == "volume"
                else f"{s.size}x{s.size} px, preset {s.preset}")
        print(f"wrote {done['out']}: {len(done['rows'])} row(s) as the network sees them ({what}; "
              f"{done['shape'][0]}x{done['shape'][1]} px)")
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
def cmd_verify(args: argparse.Namespace) -> int:
    """Any source: the table validates and every file decodes (:func:`covfuse.data.samples.undecodable`, the
    check `--skip_corrupt` uses); a CelebA folder's text files also match the release's md5 checksums."""
    from tqdm import tqdm

    from covfuse.data.inspect import check_checksums
    from covfuse.data.readers import read_table
    from covfuse.data.samples import nonfinite, undecodable

    table = read_table(args.root)
    noun = "volumes" if table.kind == "volume" else "images"
    print(f"{table.source}: format ok ({len(table):,} {noun} listed, all present)")
    problems = []
    celeba = table.format == "celeba"
    if celeba:
        print("checksums (official values from torchvision.datasets.CelebA.file_list):")
        for c in check_checksums(table.root):
            if c.status == "ok":
                print(f"  {c.name:<34} ok (md5 {c.md5})")
            elif c.status == "absent":
                print(f"  {c.name:<34} absent (optional)")
            elif c.status == "missing":
                print(f"  {c.name:<34} MISSING")
            else:
                print(f"  {c.name:<34} MISMATCH (md5 {c.md5}, official {c.expected}){c.note}")
            problems += [c.problem] if c.problem else []
    with tqdm(total=len(table), desc=f"decoding {noun}", unit=noun[:3]) as bar:
        bad = undecodable(table, workers=args.workers, progress=bar.update)
    for row, reason in bad[:20]:
        print(f"  {table.where(row)}: cannot decode {table.files[row]}: {reason}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more")
    print(f"{noun}: {len(table) - len(bad):,} of {len(table):,} decode")
    if table.kind == "volume" and not bad:
        found = nonfinite(table)
        if found:
            print(f"non-finite: {len(found):,} file(s) hold {sum(n for _, n in found):,} NaN/Inf voxel(s) (first: "
                  f"{table.files[found[0][0]]}); data.nonfinite zero (the default) sets them to 0, refuse stops")
    advice = "; replace the file or remove its row (`covfuse fit --skip_corrupt` trains without it)" \
        if bad and not problems else ""  # the first problem is a file that does not decode
    problems += [f"{table.where(row)}: {table.files[row]} does not decode ({reason})" for row, reason in bad]
    if problems:
        more = f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""
        raise UserError(f"verification failed: {problems[0]}{more}{advice}")
    print("verified: the official release, intact" if celeba else f"verified: every file of {table.path} decodes")
    return 0


# -------------------------------------------------------------------------------------- parser
def parser() -> argparse.ArgumentParser:
    from covfuse.data.twins.faces import EFFECTS
    from covfuse.data.decode import DEFAULT_PRESET, PRESETS
    from covfuse.data.decoders.nifti import GEOMETRIES, INTENSITIES

    parser = Parser(
        prog="covfuse data",
        description="Inspect, show, verify, cache or synthesise data. ROOT is a manifest CSV/TSV (2D images or NIfTI "
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

    p = sub.add_parser("show", help="draw what the network sees for the first rows (or given ids) of a source",
                       description="Draw a labelled montage (--out FILE.png) of what the network is fed for the "
                       "first N rows of a source, or the rows with given ids: each file decoded, windowed, oriented "
                       "and preprocessed by the dataset training uses, then normalised; 2D images as tiles, volumes "
                       "as three orthogonal mid-slices; each labelled with its id, file, layout and column values. "
                       "--out FILE.npy writes one row's (or one file's) decoded array instead: float32, before "
                       "resizing, volumes in RAS. The first thing to run on a new folder (docs/data.md).")
    p.add_argument("source", metavar="SOURCE", help="a manifest, BIDS or CelebA folder (as data.root), or one image "
                   "or volume file")
    p.add_argument("--out", required=True, metavar="FILE.png|FILE.npy", help="where to write the montage (.png) or "
                   "one row's decoded array (.npy)")
    p.add_argument("--rows", type=int, default=None, help="show the first N rows (default: 8 for a .png, 1 for "
                   "a .npy)")
    p.add_argument("--ids", metavar="A,B", help="show the rows with these ids (as predictions.csv names them: the "
                   "manifest's id or path column, CelebA's file names) instead of the first rows")
    p.add_argument("--covariates", metavar="A,B", help="columns to label each row with (default: all but subject, "
                   "path, split, session)")
    p.add_argument("--config", metavar="FILE.yaml", help="take the preprocessing (data.image_size, preset, geometry, "
                   "intensity, spacing) from a run config or a run's config.yaml (default: fit's defaults)")
    p.add_argument("--image_size", type=int, default=None, help="side of the model input (default: data.image_size)")
    p.add_argument("--preset", choices=tuple(PRESETS), default=None, help="2D image preset (default: data.preset)")
    p.add_argument("--geometry", choices=GEOMETRIES, default=None, help="volumes: resize or crop-pad (default: "
                   "data.geometry)")
    p.add_argument("--intensity", choices=INTENSITIES, default=None, help="volumes: zscore or minmax (default: "
                   "data.intensity)")
    p.add_argument("--spacing", type=float, default=None, help="volumes: resample to this isotropic voxel size in mm "
                   "first (default: data.spacing)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_show)

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
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed the message
        return int(exc.code or 0)
    return int(args.func(args) or 0)
