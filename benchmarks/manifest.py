"""An image manifest's data path: decoding the files every epoch vs reading the memmap cache.

    PYTHONPATH=src python benchmarks/manifest.py [--count 256] [--side 512] [--size 224] [--format png16]

Writes ``--count`` smooth random images (``png16``: 16-bit grey PNG, as radiographs are exported;
``jpeg``: RGB JPEG, as photos) and a manifest in a temporary folder, then times one process
serving batches of 64 from the files and from the cache (both through covfuse.data.samples, then
``normalize``), in one run, and prints images per second and their ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def write(folder: Path, count: int, side: int, fmt: str) -> Path:
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    lines = ["subject,path,y"]
    for i in range(count):
        noise = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(3))
        x = np.asarray(noise, dtype=np.float64)
        name = f"img/{i:05d}.{'png' if fmt == 'png16' else 'jpg'}"
        if fmt == "png16":
            Image.fromarray((x / 255 * 65535).astype(np.uint16)).save(folder / name)
        else:
            Image.fromarray(np.repeat(x[..., None], 3, axis=2).astype(np.uint8)).save(folder / name, quality=90)
        lines.append(f"s{i // 2},{name},{i % 2}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def rate(dataset, batches: list[list[int]]) -> float:
    from covfuse.data.transforms import normalize

    start = time.process_time()
    for b in batches:
        normalize(dataset.__getitems__(b).tensors["image"])
    return sum(map(len, batches)) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--format", choices=("png16", "jpeg"), default="png16")
    args = parser.parse_args()
    import torch

    from covfuse.data.readers import read_table
    from covfuse.data.samples import Settings, build_cache, make_dataset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        table = read_table(write(Path(tmp), args.count, args.side, args.format))
        s = Settings(size=args.size)
        rows, n = np.arange(len(table)), len(table)
        fresh = make_dataset(table, rows, np.zeros((n, 0)), np.zeros(n), s)
        start = time.perf_counter()
        cache = build_cache(table, s)
        build = time.perf_counter() - start
        cached = make_dataset(table, rows, np.zeros((n, 0)), np.zeros(n), s, cache=cache)
        order = np.random.default_rng(1).permutation(n).tolist()
        batches = [order[i:i + 64] for i in range(0, n, 64)]
        files, memmap = rate(fresh, batches), rate(cached, batches)
    print(f"{args.format} {args.side}px -> {args.size}px, {n} images ({cache.info['dtype']}, "
          f"{cache.shape[1]} channel(s)); cache built in {build:.1f} s")
    print(f"from files: {files:,.0f} images per CPU-second; from the cache: {memmap:,.0f}; "
          f"cache / files: {memmap / files:.1f}x")


if __name__ == "__main__":
    main()
