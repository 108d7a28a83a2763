"""The layout (channels, bit depth) a table's 2D images are decoded into, read from the files' headers.

Torch-free, so ``covfuse data info`` can count layouts without importing torch.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from covfuse.data._workers import default_workers, run_chunks
from covfuse.data.decoders import probe
from covfuse.data.table import SampleTable
from covfuse.errors import UserError

log = logging.getLogger(__name__)


def layout_name(channels: int, bits: int) -> str:
    return f"{'RGB' if channels == 3 else 'grey'} {bits}-bit"


def _probe_chunk(files: list[str]) -> list[tuple[int, int, str | None] | None]:
    """Worker: (channels, bits, rule) from each file's header, None where the header does not read."""
    out = []
    for file in files:
        try:
            info = probe(file)
            out.append((int(info["channels"]), int(info["bits"]), info.get("rule")))
        except UserError:  # a bad file is reported when decoded (or left out by --skip_corrupt)
            out.append(None)
    return out


def image_rules(table: SampleTable) -> dict[str, int]:
    """{rule: files} of the decoders' rules (covfuse.data.decoders.RULES) over the table's files, from the
    same header pass as :func:`image_layout`; {} for CelebA."""
    image_layout(table)
    return dict(table.extra.get("rules", {}))


def image_layout(table: SampleTable) -> tuple[int, str]:
    """(channels, dtype) of a table's decoded images: CelebA is RGB uint8; otherwise every file's header
    is read, and a table that mixes layouts is read in the richest, losing nothing: RGB if any file is
    colour (grey repeated into 3 channels), 16-bit if any file is 16-bit (8-bit values x 257), said
    in one warning line. Memoised on the table (the cache and the datasets ask again)."""
    if table.format == "celeba":
        return 3, "uint8"
    if "layout" in table.extra:
        return table.extra["layout"]
    key = _layout_key(table)
    if key in _LAYOUTS:  # the same manifest read again (a fit's cache build, then its datasets): one warning
        table.extra["layout"], table.extra["rules"] = _LAYOUTS[key]
        return table.extra["layout"]
    files = [str(f) for f in table.files]
    tasks = [(files[i: i + 512],) for i in range(0, len(files), 512)]
    found = [f for _, chunk in run_chunks(_probe_chunk, tasks, default_workers(len(files))) for f in chunk if f is not None]
    counts = Counter((c, b) for c, b, _ in found)
    table.extra["rules"] = dict(Counter(rule for _, _, rule in found if rule))
    if not counts:  # not one header reads: the first file's own error names it
        probe(files[0])
    channels = 3 if any(c == 3 for c, _ in counts) else 1
    bits = 16 if any(b == 16 for _, b in counts) else 8
    if len(counts) > 1:
        mix = ", ".join(f"{layout_name(*k)} {n}" for k, n in sorted(counts.items()))
        how = [*(["grey repeated into 3 channels"] if channels == 3 else []),
               *(["8-bit values scaled x257"] if bits == 16 else [])]
        log.warning("%s: the files mix layouts (%s); all are read as %s (%s)", table.path, mix,
                    layout_name(channels, bits), ", ".join(how))
    table.extra["layout"] = (channels, "uint16" if bits == 16 else "uint8")
    if key is not None:
        _LAYOUTS[key] = table.extra["layout"], table.extra["rules"]
    return table.extra["layout"]


_LAYOUTS: dict[tuple, tuple[tuple[int, str], dict[str, int]]] = {}


def _layout_key(table: SampleTable) -> tuple | None:
    """The table's source file and its state (a changed manifest is probed again); None for tables without one."""
    try:
        st = os.stat(table.path)
    except OSError:
        return None
    return str(Path(table.path).resolve()), st.st_size, st.st_mtime_ns, len(table.files)
