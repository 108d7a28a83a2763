"""Helpers for the data tests: tiny synthetic twins (cached per process) and hand-written CelebA files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from covfuse.data.readers.celeba_release import ATTR_NAMES
from covfuse.data.twins.faces import write_synth

_TWINS: dict[tuple, Path] = {}


def make_twin(tmp_path_factory, n: int = 200, size: tuple[int, int] = (44, 54), seed: int = 0,
              effect: str = "planted", images: bool = True) -> Path:
    """A synthetic twin written once per process and parameter set; treat it as read-only."""
    key = (n, size, seed, effect, images)
    if key not in _TWINS:
        out = tmp_path_factory.mktemp("twin") / "data"
        write_synth(out, n=n, seed=seed, effect=effect, image_size=size, images=images, progress=False)
        _TWINS[key] = out
    return _TWINS[key]


def copy_twin(tmp_path_factory, dest: Path, **kwargs) -> Path:
    """A private, writable copy of a twin (for tests that corrupt or extend it)."""
    src = make_twin(tmp_path_factory, **kwargs)
    shutil.copytree(src, dest)
    return dest


# A small hand-written table: (file name, split, identity, set of positive attributes).
ROWS = [
    ("000001.jpg", 0, 2880, {"Attractive", "Smiling", "Young"}),
    ("000002.jpg", 0, 2937, {"Male", "Eyeglasses"}),
    ("000003.jpg", 0, 2880, {"Young", "Bangs", "5_o_Clock_Shadow"}),
    ("000004.jpg", 1, 4153, {"Male", "Young", "Wearing_Hat", "Smiling"}),
    ("000005.jpg", 1, 4153, set()),
    ("000006.jpg", 2, 10177, set(ATTR_NAMES)),
    ("000007.jpg", 2, 1, {"Attractive", "Young", "Male"}),
]


def expected_attrs(rows=ROWS) -> np.ndarray:
    return np.array([[name in pos for name in ATTR_NAMES] for _, _, _, pos in rows], dtype=np.uint8)


def write_handmade(root: Path, newline: str = "\r\n", spacing: str = "release", rows=ROWS,
                   header_space: bool = True, images: bool = True) -> Path:
    """Write the five CelebA text files (and tiny JPEGs) for ``rows`` into ``root``.

    spacing: "release" (values right-aligned in 3 characters), "single" (one space),
    "irregular" (runs of 1-4 spaces between fields) or "tabs" (spaces and tabs mixed).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def gap() -> str:
        runs = {"single": [" "], "release": [" "], "irregular": [" ", "  ", "   ", "    "], "tabs": ["\t", " \t ", "  "]}
        return str(rng.choice(runs[spacing]))

    def values(vals, width: int = 3) -> str:
        if spacing == "release":
            return "".join(f"{v:{width}d}" for v in vals)
        return "".join(gap() + str(v) for v in vals)

    def write(name: str, lines: list[str]) -> None:
        (root / name).write_bytes((newline.join(lines) + newline).encode())

    header = " ".join(ATTR_NAMES) + (" " if header_space else "")
    attrs = expected_attrs(rows).astype(int) * 2 - 1
    write("list_attr_celeba.txt", [str(len(rows)), header] + [f + values(a) for (f, *_), a in zip(rows, attrs)])
    write("list_eval_partition.txt", [f"{f}{gap()}{s}" for f, s, _, _ in rows])
    write("identity_CelebA.txt", [f"{f}{gap()}{i}" for f, _, i, _ in rows])
    write("list_bbox_celeba.txt", [str(len(rows)), "image_id x_1 y_1 width height"]
          + [f"{f}{values([95, 71, 226, 313], 5)}" for f, *_ in rows])
    write("list_landmarks_align_celeba.txt",
          [str(len(rows)), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y "]
          + [f"{f}{values([69, 109, 106, 113, 77, 142, 73, 152, 108, 154], 5)}" for f, *_ in rows])
    if images:
        (root / "img_align_celeba").mkdir(exist_ok=True)
        for k, (f, *_) in enumerate(rows):
            Image.new("RGB", (20, 24), (10 * k, 100, 200)).save(root / "img_align_celeba" / f)
    return root


# A study config small enough for the suite: one epoch of vgg-mini at 32 px (tests/studies/test_sweep*.py).
TINY_STUDY = {
    "data": {"covariates": ["Young", "Male"], "image_size": 32, "batch_size": 32, "cache": "off"},
    "model": {"backbone": "vgg-mini"},
    "trainer": {"max_epochs": 1, "summary": False, "progress": "none"},
    "bootstrap": 50,
}
