"""Reader for the CelebA release files (attributes, partition, identities), validated line by line.

The format (see docs/data.md): ``list_attr_celeba.txt`` holds a count line, a header of 40 names
(with a trailing space) and rows ``000001.jpg -1  1 ...``; ``list_eval_partition.txt`` rows
``000001.jpg 0``; ``identity_CelebA.txt`` rows ``000001.jpg 2880``. Lines end in CRLF in the
release, LF in many copies; fields are separated by runs of spaces. All three files must list the
same images in the same order (torchvision relies on this too).

Parsing is vectorised with numpy over the raw bytes (about 1 s for the 202,599-row attribute file
on one core; per-line ``str.split`` takes about twice as long), so every problem can still be
reported with its file and 1-based line number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from covfuse.data.readers.manifest import MANIFEST_SUFFIXES
from covfuse.errors import UserError, suggest

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
BBOX_FILE = "list_bbox_celeba.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
IMAGE_DIR = "img_align_celeba"
REQUIRED_FILES = (ATTR_FILE, PARTITION_FILE, IDENTITY_FILE)
OPTIONAL_FILES = (BBOX_FILE, LANDMARKS_FILE)

#: The 40 attribute names of the release, in file order.
ATTR_NAMES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
#: Split codes of list_eval_partition.txt: 0 train, 1 valid, 2 test.
SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")

_BLANK = np.zeros(256, dtype=bool)
_BLANK[[9, 10, 11, 12, 13, 32]] = True  # tab, LF, VT, FF, CR, space: what bytes.split() skips


def find_root(root: str | os.PathLike) -> Path:
    """Return the folder holding the CelebA text files: ``root`` itself or ``root/celeba``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder (expected a CelebA folder holding {ATTR_FILE})")
    for candidate in (root, root / "celeba"):
        if (candidate / ATTR_FILE).is_file():
            return candidate
    manifests = sorted(p for p in root.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file())
    if manifests:  # the folder a twin or a lab keeps its manifests in: name them, not CelebA's files
        names = " or ".join(p.as_posix() for p in manifests[:3]) + (" ..." if len(manifests) > 3 else "")
        raise UserError(f"{root}: a folder holding manifests, not a dataset folder; give the manifest itself ({names})")
    raise UserError(
        f"{root}: not a CelebA folder: neither {root / ATTR_FILE} nor {root / 'celeba' / ATTR_FILE} exists"
    )


def _clip(text: str, limit: int = 70) -> str:
    """Shorten ``text`` for an error message (a whole line may hold millions of characters)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Tokens:
    """The whitespace-separated tokens of one text file, each with its 1-based line number."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{path}: required file is missing") from None
        if b"\r" in self.data and b"\n" not in self.data:
            raise UserError(f"{path}: lines end in a lone CR (classic Mac); convert them to LF or CRLF")
        b = self.bytes = np.frombuffer(self.data, dtype=np.uint8)
        blank = _BLANK[b]
        if self.data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors add
            blank[:3] = True
        # Token boundaries are where blank/non-blank flips; pad so every token has a start and an end.
        edges = np.flatnonzero(blank[1:] != blank[:-1]) + 1
        if len(b) and not blank[0]:
            edges = np.concatenate(([0], edges))
        if len(b) and not blank[-1]:
            edges = np.concatenate((edges, [len(b)]))
        self.starts, self.ends = edges[0::2], edges[1::2]
        newlines = np.flatnonzero(b == 10)
        num_lines = len(newlines) + (1 if len(b) and b[-1] != 10 else 0)
        # tokens before each line end -> tokens on each line -> each token's line number
        before = np.searchsorted(self.starts, np.append(newlines, len(b))[:num_lines])
        self.per_line = np.diff(before, prepend=0)
        self.line = np.repeat(np.arange(1, num_lines + 1), self.per_line)

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> str:
        return self.data[self.starts[i] : self.ends[i]].decode("utf-8", "replace")

    def line_text(self, line: int) -> list[str]:
        if not 1 <= line <= len(self.per_line):
            return []
        first = int(self.per_line[: line - 1].sum())
        return [self.text(i) for i in range(first, first + int(self.per_line[line - 1]))]

    def error(self, line: int, message: str) -> UserError:
        return UserError(f"{self.path}: line {line}: {message}")

    def rows(self, first_line: int, width: int, what: str) -> tuple[int, int]:
        """(first token, number of rows) of the lines from ``first_line`` on, each of ``width``
        fields; blank lines are allowed only at the end."""
        counts = self.per_line[first_line - 1 :]
        nonblank = np.flatnonzero(counts)
        counts = counts[: nonblank[-1] + 1] if len(nonblank) else counts[:0]
        bad = np.flatnonzero(counts != width)
        if len(bad):
            line = first_line + int(bad[0])
            found = " ".join(self.line_text(line))
            found = f"{counts[bad[0]]}: {_clip(found)!r}" if found else "an empty line"
            raise self.error(line, f"expected {width} fields ({what}), found {found}")
        return int(self.per_line[: first_line - 1].sum()), len(counts)

    def column(self, per_token: np.ndarray, start: int, n: int, width: int, col: slice | int) -> np.ndarray:
        """Column(s) ``col`` of the (n, width) table of ``per_token`` values starting at ``start``."""
        return per_token[start : start + n * width].reshape(n, width)[:, col]

    def strings(self, idx: np.ndarray) -> np.ndarray:
        """The tokens at ``idx`` as a numpy bytes array (vectorised gather, no per-token Python)."""
        starts, lengths = self.starts[idx], (self.ends - self.starts)[idx]
        width = int(lengths.max()) if len(idx) else 1
        offsets = np.arange(width)
        chars = self.bytes[np.minimum(starts[:, None] + offsets, len(self.bytes) - 1)]
        chars = np.where(offsets < lengths[:, None], chars, 0).astype(np.uint8)
        return np.ascontiguousarray(chars).view(f"S{width}").ravel()

    def count_line(self) -> int:
        """The declared number of rows on line 1."""
        fields = self.line_text(1)
        if len(fields) != 1 or not fields[0].isdigit():
            raise self.error(1, f"expected the number of images, found {_clip(' '.join(fields))!r}")
        return int(fields[0])


def _read_counted(tokens: _Tokens, width: int, what: str) -> tuple[int, int]:
    """Validate a file with a count line, a header line and rows of ``width`` fields."""
    declared = tokens.count_line()
    start, n = tokens.rows(3, width, what)
    if n != declared:
        raise tokens.error(1, f"declares {declared} images but the file has {n} rows (lines 3-{2 + n})")
    return start, n


def _check_names(tokens: _Tokens, names: np.ndarray, ref: np.ndarray, ref_path: Path) -> None:
    """Every file must list the same images in the same order as the attribute file."""
    if len(names) != len(ref):
        raise UserError(
            f"{tokens.path}: has {len(names)} rows but {ref_path} has {len(ref)}; both must list the same images"
        )
    differ = np.flatnonzero(names != ref)
    if len(differ):
        i = int(differ[0])
        raise tokens.error(
            int(tokens.line[tokens.rows(1, 2, "")[0] + 2 * i]),
            f"expected file name {ref[i].decode()!r} (as on line {i + 3} of {ref_path.name}), "
            f"found {names[i].decode(errors='replace')!r}",
        )


def _parse_attrs(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    tok = _Tokens(path)
    names = tok.line_text(2)
    if not names:
        raise tok.error(2, "expected the attribute names, found an empty line")
    if len({n.lower() for n in names}) != len(names):
        dup = next(n for n in names if sum(m.lower() == n.lower() for m in names) > 1)
        raise tok.error(2, f"attribute name {dup!r} appears twice")
    width = 1 + len(names)
    start, n = _read_counted(tok, width, f"a file name and {len(names)} values of -1 or 1")
    values = slice(1, None)
    length = tok.column(tok.ends - tok.starts, start, n, width, values)
    first = tok.column(tok.bytes[tok.starts], start, n, width, values)
    second = tok.column(tok.bytes[np.minimum(tok.starts + 1, len(tok.bytes) - 1)], start, n, width, values)
    positive = (length == 1) & (first == ord("1"))
    negative = (length == 2) & (first == ord("-")) & (second == ord("1"))
    bad = np.argwhere(~(positive | negative))
    if len(bad):
        r, c = (int(x) for x in bad[0])
        i = start + r * width + 1 + c
        raise tok.error(
            int(tok.line[i]), f"expected -1 or 1 for {names[c]!r} (value {c + 1}), found {tok.text(i)!r}"
        )
    filenames = tok.strings(np.arange(start, start + n * width, width))
    return names, filenames, positive.astype(np.uint8)


def _parse_partition(path: Path) -> tuple[_Tokens, np.ndarray, np.ndarray]:
    tok = _Tokens(path)
    start, n = tok.rows(1, 2, "a file name and a split code 0, 1 or 2")
    length = tok.column(tok.ends - tok.starts, start, n, 2, 1)
    first = tok.column(tok.bytes[tok.starts], start, n, 2, 1)
    bad = np.flatnonzero(~((length == 1) & (first >= ord("0")) & (first <= ord("2"))))
    if len(bad):
        i = start + 2 * int(bad[0]) + 1
        raise tok.error(int(tok.line[i]), f"expected split code 0 (train), 1 (valid) or 2 (test), found {tok.text(i)!r}")
    names = tok.strings(np.arange(start, start + 2 * n, 2))
    return tok, names, (first - ord("0")).astype(np.int8)


def _parse_identity(path: Path) -> tuple[_Tokens, np.ndarray, np.ndarray]:
    tok = _Tokens(path)
    start, n = tok.rows(1, 2, "a file name and an identity number")
    length = tok.column(tok.ends - tok.starts, start, n, 2, 1)
    digits = np.isin(tok.bytes, np.frombuffer(b"0123456789", np.uint8))
    # a token is all digits iff its digit count equals its length
    digit_count = np.add.reduceat(digits.view(np.uint8), tok.starts, dtype=np.int64) if len(tok) else np.zeros(0, np.int64)
    ok = tok.column(digit_count, start, n, 2, 1) == length
    bad = np.flatnonzero(~ok) if len(tok) else []
    if len(bad):
        i = start + 2 * int(bad[0]) + 1
        raise tok.error(int(tok.line[i]), f"expected a non-negative integer identity, found {tok.text(i)!r}")
    identity = tok.strings(np.arange(start + 1, start + 2 * n, 2)).astype(np.int64) if n else np.zeros(0, np.int64)
    return tok, tok.strings(np.arange(start, start + 2 * n, 2)), identity


class Selection(NamedTuple):
    """Canonical spellings of a selected target and covariates."""

    target: str
    covariates: list[str]


@dataclass(eq=False)
class CelebAMeta:
    """Everything in the CelebA text files, validated; row i describes ``image_dir / filenames[i]``."""

    root: Path
    image_dir: Path
    filenames: list[str]
    attr_names: list[str]
    attrs: np.ndarray  # uint8 (N, A) in {0, 1}
    split: np.ndarray  # int8 (N,): 0 train, 1 valid, 2 test
    identity: np.ndarray  # int64 (N,)
    _lower: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lower = {n.lower(): i for i, n in enumerate(self.attr_names)}

    def __len__(self) -> int:
        return len(self.filenames)

    def __repr__(self) -> str:
        counts = np.bincount(self.split, minlength=3)
        return (
            f"CelebAMeta(root={str(self.root)!r}, images={len(self)}, attributes={len(self.attr_names)}, "
            f"train/valid/test={counts[0]}/{counts[1]}/{counts[2]}, identities={len(np.unique(self.identity))})"
        )

    def column(self, name: str) -> int:
        """Index of attribute ``name`` (case-insensitive) in ``attr_names``."""
        try:
            return self._lower[str(name).lower()]
        except KeyError:
            raise UserError(
                f"unknown attribute {name!r}{suggest(str(name), self.attr_names)}; "
                f"valid names are listed by `covfuse data info {self.root}`"
            ) from None

    def canonical(self, name: str) -> str:
        """The attribute's spelling in the file."""
        return self.attr_names[self.column(name)]

    def select(self, target: str, covariates: Sequence[str] | str = ()) -> tuple[np.ndarray, np.ndarray, Selection]:
        """Return (y float32 (N,), C float32 (N, K), Selection(target, covariates)) with values 0/1.

        ``covariates`` is a list of names or a comma-separated string; names are case-insensitive.
        """
        names = [c.strip() for c in covariates.split(",") if c.strip()] if isinstance(covariates, str) else list(covariates)
        t = self.column(target)
        cols = [self.column(c) for c in names]
        if t in cols:
            raise UserError(f"attribute {self.attr_names[t]!r} is the target; it cannot also be a covariate")
        if len(set(cols)) != len(cols):
            dup = next(self.attr_names[c] for c in cols if cols.count(c) > 1)
            raise UserError(f"covariate {dup!r} is listed twice")
        y = self.attrs[:, t].astype(np.float32)
        c = self.attrs[:, cols].astype(np.float32).reshape(len(self), len(cols))
        return y, c, Selection(self.attr_names[t], [self.attr_names[i] for i in cols])


def read_celeba(root: str | os.PathLike, *, check_images: bool = True) -> CelebAMeta:
    """Parse and validate a CelebA folder (``root`` holding the files, or ``root/celeba``).

    Raises :class:`UserError` naming the file and line of the first problem. With
    ``check_images`` (the default) every listed image must exist in ``img_align_celeba/``.
    """
    base = find_root(root)
    for name in REQUIRED_FILES:
        if not (base / name).is_file():
            raise UserError(f"{base / name}: required file is missing (CelebA needs {', '.join(REQUIRED_FILES)})")
    attr_path = base / ATTR_FILE
    attr_names, names, attrs = _parse_attrs(attr_path)
    ptok, pnames, split = _parse_partition(base / PARTITION_FILE)
    _check_names(ptok, pnames, names, attr_path)
    itok, inames, identity = _parse_identity(base / IDENTITY_FILE)
    _check_names(itok, inames, names, attr_path)
    filenames = [n.decode("utf-8", "replace") for n in names.tolist()]
    image_dir = base / IMAGE_DIR
    if check_images:
        _check_images(image_dir, filenames, attr_path)
    return CelebAMeta(base, image_dir, filenames, attr_names, attrs, split, identity)


def _check_images(image_dir: Path, filenames: list[str], attr_path: Path) -> None:
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: image folder is missing (expected the JPEGs listed in {attr_path})")
    present = set(os.listdir(image_dir))
    for i, name in enumerate(filenames):
        if name not in present:
            raise UserError(
                f"{image_dir / name}: image is missing (listed on line {i + 3} of {attr_path})"
            )
