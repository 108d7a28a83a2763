"""Volume cache build at scale: a synthetic cohort of NIfTI files cached by worker processes, with the
build's time, the cache's size and the peak resident memory of the build (this process and its
largest worker, from the kernel's high-water marks), so a cache bigger than the machine's memory
can be checked to build in bounded memory.

    python benchmarks/volume_cache.py [--count 6000] [--size 128] [--workers 2] [--input 48] [--geometry resize] [--max-rss-gib 2] [--cgroup-gib 2] [--dir DIR]

``--max-rss-gib``: exit 1 if the build's peak proportional set size (this process and its workers,
sampled every 0.2 s; shared library pages divided among the processes using them) exceeds it.
``--cgroup-gib``: build inside a memory cgroup of that size (needs root and cgroup v1 or v2 mounted
writable at /sys/fs/cgroup): the kernel then counts the cache file's pages in page cache too, so a
cache larger than the limit cannot stay resident, and a build that needed more would be killed.
The cohort and the cache are written under ``--dir`` (default: a temporary folder, removed after).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from covfuse.data.cache import build_volume_cache
from covfuse.data.decoders.volume import Preprocessing


def status(field: str) -> float:
    """A line of /proc/self/status in GiB (VmHWM: peak resident; RssAnon, RssFile: resident now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _kib(pid: str, name: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # the process ended between listing and reading
        pass
    return 0


class Peak(threading.Thread):
    """Samples this process and its worker processes every 0.2 s; keeps the peak of their summed
    resident memory (VmRSS: shared library pages counted once per process), proportional set
    size (Pss: shared pages divided among their users, what the build really occupies) and
    anonymous memory (RssAnon: heap, not file pages)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"VmRSS": 0, "Pss": 0, "RssAnon": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self.stop.wait(0.2):
            pids = [me]
            for task in Path(f"/proc/{me}/task").iterdir():
                try:
                    pids += (task / "children").read_text().split()
                except OSError:
                    pass
            for field, name in (("VmRSS", "status"), ("Pss", "smaps_rollup"), ("RssAnon", "status")):
                self.peak[field] = max(self.peak[field], sum(_kib(p, name, field) for p in pids))


def enter_cgroup(gib: float) -> Path:
    """Move this process (and so the workers it starts) into a new memory cgroup limited to ``gib``; its folder."""
    limit = str(int(gib * 2**30))
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    base = Path("/sys/fs/cgroup") if v2.exists() else Path("/sys/fs/cgroup/memory")
    group = base / f"covfuse-volume-bench-{os.getpid()}"
    group.mkdir()
    (group / ("memory.max" if v2.exists() else "memory.limit_in_bytes")).write_text(limit)
    (group / "cgroup.procs").write_text(str(os.getpid()))
    return group


def cgroup_peak(group: Path) -> float:
    """The cgroup's peak charge in GiB (anonymous memory and page cache): v1's max_usage, v2's memory.peak."""
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        if (group / name).exists():
            return int((group / name).read_text()) / 2**30
    return float("nan")


def leave_cgroup(group: Path) -> None:
    """Back to the parent cgroup, and the benchmark's cgroup removed."""
    (group.parent / "cgroup.procs").write_text(str(os.getpid()))
    for _ in range(100):  # the workers may still be exiting
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    print(f"note: could not remove {group} (still in use); rmdir it once empty", file=sys.stderr)


def cohort(folder: Path, count: int, side: int) -> list[Path]:
    """``count`` int16 NIfTI files of ``side``^3 voxels: a bright ball in noise, a different one each."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.linalg.norm(np.indices((side,) * 3) - (side - 1) / 2, axis=0)
    files = []
    for i in range(count):
        rng = np.random.default_rng(i)
        data = (1000 * (grid < side * rng.uniform(0.3, 0.45)) + rng.normal(0, 50, grid.shape)).astype(np.int16)
        files.append(folder / f"sub-{i:05d}.nii")
        nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), str(files[-1]))
    return files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=6000, help="volumes in the cohort (default 6000)")
    p.add_argument("--size", type=int, default=128, help="cube side of the cache (default 128: 4 MiB a volume)")
    p.add_argument("--input", type=int, default=48, help="cube side of the synthetic files (default 48)")
    p.add_argument("--geometry", default="resize", help="resize or crop-pad (default resize)")
    p.add_argument("--workers", type=int, default=2, help="build processes (default 2)")
    p.add_argument("--chunk", type=int, default=32, help="volumes per chunk (default 32)")
    p.add_argument("--max-rss-gib", type=float, default=None, help="fail if the build's peak memory exceeds this")
    p.add_argument("--cgroup-gib", type=float, default=None,
                   help="build inside a memory cgroup of this many GiB (root; page cache counted)")
    p.add_argument("--dir", type=Path, default=None, help="where to write the cohort and cache (default: a temporary folder)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="covfuse-volume-bench-", dir=args.dir))
    try:
        start = time.perf_counter()
        files = cohort(root / "cohort", args.count, args.input)
        print(f"wrote {args.count:,} NIfTI files ({args.input}^3) in {time.perf_counter() - start:.1f} s")
        before = status("VmHWM")
        group = enter_cgroup(args.cgroup_gib) if args.cgroup_gib else None
        monitor = Peak()
        monitor.start()
        start = time.perf_counter()
        cache = build_volume_cache(files, Preprocessing(size=args.size, geometry=args.geometry), root / "cache",
                                   progress=False, workers=args.workers, chunk=args.chunk)
        took = time.perf_counter() - start
        monitor.stop.set()
        monitor.join()
        if group is not None:
            charged = cgroup_peak(group)
            leave_cgroup(group)
            print(f"built inside a memory cgroup limited to {args.cgroup_gib:g} GiB: its peak charge (processes "
                  f"and page cache) {charged:.2f} GiB")
        peak = {k: v / 2**20 for k, v in monitor.peak.items()}
        gib = cache.path.stat().st_size / 2**30
        worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB, largest child
        parent = status("VmHWM")
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(f"cache {cache.path.name}: {len(cache):,} volumes at {args.size}^3, {gib:.2f} GiB "
              f"(machine memory {total:.1f} GiB)")
        print(f"build: {took:.1f} s with {args.workers} workers, chunks of {args.chunk} "
              f"({len(cache) / took:.1f} volumes/s)")
        print(f"peak of the build, this process + workers (sampled every 0.2 s): RSS {peak['VmRSS']:.2f} GiB, "
              f"PSS {peak['Pss']:.2f} GiB, anonymous {peak['RssAnon']:.2f} GiB")
        print(f"high-water marks: this process {parent:.2f} GiB (before the build {before:.2f}), "
              f"largest worker {worker:.2f} GiB")
        if args.max_rss_gib is not None and peak["Pss"] > args.max_rss_gib:
            print(f"FAIL: the build's peak PSS {peak['Pss']:.2f} GiB exceeds --max-rss-gib {args.max_rss_gib}",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
