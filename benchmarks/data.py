"""Data-loading throughput per CPU core, measured in one run: JPEG decode+transform vs the memmap cache.

    python benchmarks/data.py [--n 1000] [--repeats 3] [--skip-synth]

Writes a synthetic twin at the release's 178x218 into a temporary folder, then, in this one
process with torch limited to one thread:

* JPEG -> uint8 (3, S, S) with ``covfuse.data.transforms.load_image`` (PIL with libjpeg's
  reduced-scale DCT decoding: simplejpeg for colour JPEGs, PIL `draft` otherwise) and, for comparison, the same crop+resize after a full decode;
* the memmap cache read as random batches of 256 (``ImageCache.get_batch``), and through
  ``CelebADataset.__getitems__`` + DataLoader's default collate (what training sees);
* parsing a 202,599-row label set (the release's size) and drawing 10,000 synthetic faces.

Numbers are the best of ``--repeats`` runs (the machine may be shared). Paste the table into
docs/performance.md ("Data loading").
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from covfuse.data.cache import build_cache
from covfuse.data.celeba import read_celeba
from covfuse.data.dataset import CelebADataset
from covfuse.data.decode import crop_box
from covfuse.data.synth import write_synth
from covfuse.data.transforms import load_image

SIZES = (64, 128, 224)
BATCH = 256


def best_rate(fn, count: int, repeats: int) -> float:
    """Items per CPU-second of ``fn()`` processing ``count`` items, best of ``repeats``.

    CPU time of this single-threaded process is the per-core cost, and unlike wall time it does
    not count the time other processes on a shared machine hold the core.
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return count / best


def full_decode(path: Path, size: int, preset: str = "center-crop") -> torch.Tensor:
    """The naive pipeline: decode every pixel, then crop and resize (no draft)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        out = img.resize((size, size), Image.BILINEAR, box=crop_box(*img.size, preset))
    return torch.from_numpy(np.asarray(out).transpose(2, 0, 1).copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="JPEGs to decode per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-synth", action="store_true", help="skip the 10,000-face drawing measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synth(Path(tmp) / "twin", n=args.n, seed=0, progress=False)
        meta = read_celeba(root)
        files = [meta.image_dir / f for f in meta.filenames]
        for size in SIZES:
            jpeg = best_rate(lambda: [load_image(f, size) for f in files], len(files), args.repeats)
            naive = best_rate(lambda: [full_decode(f, size) for f in files], len(files), args.repeats)
            cache = build_cache(meta, size, workers=0, progress=False)
            rng = np.random.default_rng(0)
            batches = [rng.choice(len(meta), BATCH, replace=False) for _ in range(max(1, 8 * len(meta) // BATCH))]
            cached = best_rate(lambda: [cache.get_batch(b) for b in batches], BATCH * len(batches), args.repeats)
            ds = CelebADataset(meta, np.arange(len(meta)), "Attractive", ["Young", "Male"], image_size=size,
                               train=True, cache=cache)
            loader = best_rate(lambda: [default_collate(ds.__getitems__(b.tolist())) for b in batches],
                               BATCH * len(batches), args.repeats)
            rows.append((size, jpeg, naive, cached, loader))
            print(f"measured {size} px", flush=True)

        labels = Path(tmp) / "labels"
        write_synth(labels, n=202_599, seed=0, images=False, progress=False)
        parse = 1 / best_rate(lambda: read_celeba(labels, check_images=False), 1, args.repeats)
        synth = None
        if not args.skip_synth:
            start, wall = time.process_time(), time.perf_counter()
            write_synth(Path(tmp) / "synth10k", n=10_000, seed=1, progress=False)
            synth, synth_wall = time.process_time() - start, time.perf_counter() - wall

    print()
    print(f"Data loading, images per CPU-second in one process (torch.set_num_threads(1)), best of {args.repeats}; "
          f"JPEGs are the twin's 178x218, preset center-crop, {args.n} images:")
    print()
    print("| size | JPEG decode+transform (scaled DCT) | same, full decode | speed-up | cache `get_batch` (256) "
          "| cache via dataset + collate |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, jpeg, naive, cached, loader in rows:
        print(f"| {size} px | {jpeg:,.0f} | {naive:,.0f} | {jpeg / naive:.1f}x | {cached:,.0f} | {loader:,.0f} |")
    print()
    print(f"Parsing 202,599 label rows (attributes, partition, identities): {parse:.2f} CPU-s")
    print(f"machine load while measuring (1/5/15 min): {' '.join(open('/proc/loadavg').read().split()[:3])}"
          if Path("/proc/loadavg").exists() else "")
    if synth is not None:
        print(f"Drawing a 10,000-image twin at 178x218 (one process): {synth:.1f} CPU-s, {synth_wall:.1f} s wall "
              f"({10_000 / synth:,.0f} images per CPU-second)")
    ok64 = rows[0][1] >= 3000
    okc = min(r[3] for r in rows[:1]) >= 20_000
    print(f"targets: JPEG->64 px >= 3,000/s/core: {'met' if ok64 else 'NOT met'}; "
          f"cache at 64 px >= 20,000/s/core: {'met' if okc else 'NOT met'}")


if __name__ == "__main__":
    main()
