"""Volume data path: volumes per CPU-second from NIfTI (nibabel + MONAI preprocessing) and from the
float16 memmap cache, measured in one run on one twin (single thread; CPU time, steady on a shared machine).

    python benchmarks/volumes.py MANIFEST.csv [--count 60] [--size 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def rate(fn, count: int) -> tuple[float, float]:
    """(volumes per CPU-second, per wall-second) of ``fn(i)`` over ``count`` volumes."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        fn(i)
    return count / max(time.process_time() - cpu, 1e-9), count / max(time.perf_counter() - wall, 1e-9)


def main() -> None:
    from covfuse.data.cache import build_volume_cache
    from covfuse.data.dataset import VolumeDataset
    from covfuse.data.decoders.volume import Preprocessing, load_volume, transform
    from covfuse.data.readers.manifest import read_manifest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest")
    p.add_argument("--count", type=int, default=60, help="volumes to read (default 60)")
    p.add_argument("--size", type=int, default=64, help="cube side (default 64)")
    args = p.parse_args()
    torch.set_num_threads(1)
    manifest = read_manifest(args.manifest)
    files = manifest.files[: args.count]
    settings = Preprocessing(size=args.size)
    pipeline = transform(settings)
    nifti = rate(lambda i: load_volume(files[i], settings, pipeline), len(files))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        cache = build_volume_cache(files, settings, Path(tmp), progress=False)
        build = len(files) / max(time.process_time() - start, 1e-9)
        dataset = VolumeDataset(files, range(len(files)), torch.zeros(len(files), 0).numpy(),
                                torch.zeros(len(files)).numpy(), settings, cache=cache)
        cached = rate(lambda i: dataset[i], len(files))
    print(f"{len(files)} volumes at {args.size}^3 (float16 samples), single thread")
    print(f"{'path':<34}{'vol/CPU-s':>10}{'vol/s wall':>12}")
    print(f"{'NIfTI -> MONAI preprocessing':<34}{nifti[0]:>10.1f}{nifti[1]:>12.1f}")
    print(f"{'building the cache':<34}{build:>10.1f}{'':>12}")
    print(f"{'cache -> VolumeDataset sample':<34}{cached[0]:>10.1f}{cached[1]:>12.1f}")
    print(f"cache / NIfTI: {cached[0] / nifti[0]:.0f}x per CPU-second")


if __name__ == "__main__":
    main()
