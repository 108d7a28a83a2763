"""Data benchmark: images/s through a DataLoader, covfuse's JPEG and cache paths against
torchvision's ``CelebA`` + transforms, at 1, 2 and all cores, 64/128/224 px.

Every path ends in a normalised float batch on the CPU (covfuse normalises after the loader, as
training does on the device). A synthetic twin at the release's 178x218 stands in for CelebA
(same files and format); torchvision's md5 check of the text files is bypassed for it, as its own
tests do. Rounds interleave the paths; rates are wall-clock images/s of a full pass.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from covfuse.bench.timing import interleaved, ratio
from covfuse.data import read_celeba
from covfuse.data.cache import build_cache
from covfuse.data.dataset import CelebADataset, collate
from covfuse.data.transforms import normalize
from covfuse.data.twins.faces import write_synth

BATCH = 64


def _drain(loader, normalise: bool) -> None:
    for batch in loader:
        if normalise:
            normalize(batch["image"])


def _torchvision(root: Path, size: int):
    from torchvision import datasets, transforms  # lazy: torchvision only for the baseline path

    class TwinCelebA(datasets.CelebA):
        def _check_integrity(self) -> bool:  # the twin's text files are not the release's (md5)
            return True

    tf = transforms.Compose([transforms.CenterCrop(178), transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.5] * 3)])
    return TwinCelebA(str(root), split="all", target_type="attr", transform=tf, download=False)


def run(n: int, sizes: list[int], cores: list[int], rounds: int, echo=print) -> list[dict]:
    rows = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "twin"
        write_synth(root, n=n, seed=0, progress=False)
        meta = read_celeba(root / "celeba" if (root / "celeba").is_dir() else root)
        echo(f"\nimages/s through a DataLoader (1 core: per CPU-second of this process; more: wall clock), batch {BATCH}, {n} JPEGs of the twin at 178x218, "
             f"center-crop; ratios: median [min-max] of {rounds} interleaved rounds\n")
        echo("| size | cores | torchvision CelebA | covfuse JPEG | covfuse cache | cache `get_batch` | "
             "JPEG / torchvision | cache / torchvision | get_batch / cache loader |")
        echo("|---|---|---|---|---|---|---|---|---|")
        for size in sizes:
            cache = build_cache(meta, size, workers=0, progress=False)
            tv = _torchvision(root, size)
            jpeg = CelebADataset(meta, np.arange(len(meta)), "Attractive", ["Young", "Male"], image_size=size, train=True)
            cached = CelebADataset(meta, np.arange(len(meta)), "Attractive", ["Young", "Male"], image_size=size,
                                   train=True, cache=cache)
            rng = np.random.default_rng(0)
            batches = [rng.permutation(len(meta))[:BATCH] for _ in range(len(meta) // BATCH)]
            for k in cores:
                workers = 0 if k == 1 else k
                torch.set_num_threads(1 if k == 1 else threads)
                kw = dict(batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
                loaders = {
                    "torchvision": DataLoader(tv, **kw),
                    "jpeg": DataLoader(jpeg, collate_fn=collate, **kw),
                    "cache": DataLoader(cached, collate_fn=collate, **kw),
                }
                variants = {name: (lambda ld, norm: lambda: _drain(ld, norm))(ld, name != "torchvision")
                            for name, ld in loaders.items()}
                variants["get_batch"] = lambda: [normalize(cache.get_batch(np.sort(b))) for b in batches]
                # one core: CPU time of this process (steady on a shared machine); workers: wall clock (other processes)
                samples = interleaved(variants, rounds, cpu_time=workers == 0)
                count = {name: len(meta) for name in variants}
                count["get_batch"] = BATCH * len(batches)
                rate = {name: count[name] / float(np.median(v)) for name, v in samples.items()}
                # rates: a ratio of rates is the inverse ratio of per-image times
                per_image = {name: [t / count[name] for t in v] for name, v in samples.items()}
                r_jpeg = ratio(per_image, "torchvision", "jpeg")
                r_cache = ratio(per_image, "torchvision", "cache")
                r_get = ratio(per_image, "cache", "get_batch")
                echo(f"| {size} px | {k} | {rate['torchvision']:,.0f} | {rate['jpeg']:,.0f} | {rate['cache']:,.0f} | "
                     f"{rate['get_batch']:,.0f} | {r_jpeg.spread()} | {r_cache.spread()} | {r_get.spread()} |")
                rows.append({"size": size, "cores": k, "workers": workers, "images_per_s": {m: round(v, 1) for m, v in rate.items()},
                             "jpeg_over_torchvision": r_jpeg.as_dict(), "cache_over_torchvision": r_cache.as_dict(),
                             "get_batch_over_cache_loader": r_get.as_dict()})
                del loaders, variants
            torch.set_num_threads(threads)
    return rows


def default_cores() -> list[int]:
    all_cores = os.cpu_count() or 1
    return sorted({1, min(2, all_cores), all_cores})
