"""The CelebA reader against torchvision's own parser, hand-written files, and malformed input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CelebA

from covfuse.cli.main import main as cli
from covfuse.data.readers.celeba_release import ATTR_NAMES, find_root, read_celeba
from covfuse.data.table import SPLIT_NAMES
from covfuse.errors import UserError

from data_fixtures import ROWS, expected_attrs, make_twin, write_handmade


@pytest.fixture
def torchvision_celeba(monkeypatch):
    """torchvision's CelebA without its md5 check (as torchvision's own tests do)."""
    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)

    def load(root, split):
        return CelebA(str(root), split=split, target_type=["attr", "identity"], download=False)

    return load


def _compare_with_torchvision(root: Path, load) -> None:
    meta = read_celeba(root)
    for split in ("all", "train", "valid", "test"):
        ref = load(root, split)
        rows = np.arange(len(meta)) if split == "all" else np.flatnonzero(meta.split == SPLIT_NAMES.index(split))
        assert [meta.filenames[i] for i in rows] == list(ref.filename)
        assert torch.equal(torch.from_numpy(meta.attrs[rows].astype(np.int64)), ref.attr)
        assert torch.equal(torch.from_numpy(meta.identity[rows]), ref.identity.squeeze(1))
    # torchvision keeps the empty name after the header's trailing space; we do not.
    assert ref.attr_names[:40] == meta.attr_names and ref.attr_names[40:] in ([], [""])


def test_twin_matches_torchvision(tmp_path_factory, torchvision_celeba):
    root = make_twin(tmp_path_factory)
    _compare_with_torchvision(root, torchvision_celeba)
    meta = read_celeba(root)
    assert meta.attr_names == list(ATTR_NAMES)
    assert meta.attrs.dtype == np.uint8 and meta.split.dtype == np.int8 and meta.identity.dtype == np.int64
    assert meta.root == root / "celeba" and meta.image_dir == root / "celeba" / "img_align_celeba"


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
@pytest.mark.parametrize("spacing", ["release", "single", "irregular", "tabs"])
def test_handwritten_files_match_torchvision_and_the_table(tmp_path, torchvision_celeba, newline, spacing):
    root = write_handmade(tmp_path / "celeba", newline=newline, spacing=spacing)
    meta = read_celeba(tmp_path)
    assert meta.filenames == [r[0] for r in ROWS]
    assert np.array_equal(meta.attrs, expected_attrs())
    assert meta.split.tolist() == [r[1] for r in ROWS]
    assert meta.identity.tolist() == [r[2] for r in ROWS]
    if spacing != "tabs":  # torchvision's csv reader skips runs of spaces but not tabs
        _compare_with_torchvision(tmp_path, torchvision_celeba)
    assert read_celeba(root).root == root  # the folder itself works as ROOT too


def test_trailing_spaces_blank_lines_bom_and_no_header_space(tmp_path):
    root = write_handmade(tmp_path, newline="\n", header_space=False)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "identity_CelebA.txt"):
        text = (root / name).read_text()
        (root / name).write_text("\ufeff" + "".join(line + "  \n" for line in text.splitlines()) + "\n\n")
    meta = read_celeba(root)
    assert np.array_equal(meta.attrs, expected_attrs()) and meta.identity.tolist() == [r[2] for r in ROWS]


def test_find_root_prefers_files_then_celeba_subfolder(tmp_path):
    write_handmade(tmp_path / "celeba")
    assert find_root(tmp_path) == tmp_path / "celeba"
    with pytest.raises(UserError, match="not a CelebA folder"):
        find_root(tmp_path / "celeba" / "img_align_celeba")
    with pytest.raises(UserError, match="no such folder"):
        find_root(tmp_path / "nope")


def test_column_and_select_by_name(tmp_path):
    meta = read_celeba(write_handmade(tmp_path))
    assert meta.column("smiling") == ATTR_NAMES.index("Smiling") == 31
    y, c, sel = meta.select("attractive", "young, MALE")
    assert sel.target == "Attractive" and sel.covariates == ["Young", "Male"]
    table = expected_attrs()
    assert y.dtype == np.float32 and c.dtype == np.float32 and c.shape == (len(ROWS), 2)
    assert np.array_equal(y, table[:, 2]) and np.array_equal(c, table[:, [39, 20]])
    assert meta.select("Smiling")[1].shape == (len(ROWS), 0)
    with pytest.raises(UserError, match=r"unknown attribute 'Smilling' \(did you mean 'Smiling'\?\)"):
        meta.column("Smilling")
    with pytest.raises(UserError, match="cannot also be a covariate"):
        meta.select("Young", ["young"])
    with pytest.raises(UserError, match="listed twice"):
        meta.select("Smiling", ["Male", "male"])


def _replace_line(path: Path, line: int, new: str) -> None:
    lines = path.read_bytes().decode().split("\r\n")
    lines[line - 1] = new
    path.write_bytes("\r\n".join(lines).encode())


def _attr_row(filename: str, values: list[str]) -> str:
    return filename + "".join(f"{v:>3}" for v in values)


MALFORMED = {
    # name: (how to break the folder, extra CLI args, expected fragments of the one-line message)
    "wrong count": (lambda r: _replace_line(r / "list_attr_celeba.txt", 1, "8"), [],
                    ["list_attr_celeba.txt: line 1:", "declares 8 images", "has 7 rows"]),
    "count not a number": (lambda r: _replace_line(r / "list_attr_celeba.txt", 1, "seven"), [],
                           ["list_attr_celeba.txt: line 1:", "expected the number of images"]),
    "bad value": (lambda r: _replace_line(r / "list_attr_celeba.txt", 5, _attr_row("000003.jpg", ["0"] + ["1"] * 39)), [],
                  ["list_attr_celeba.txt: line 5:", "expected -1 or 1 for '5_o_Clock_Shadow'", "found '0'"]),
    "short row": (lambda r: _replace_line(r / "list_attr_celeba.txt", 6, _attr_row("000004.jpg", ["1"] * 39)), [],
                  ["list_attr_celeba.txt: line 6:", "expected 41 fields", "found 40"]),
    "duplicate name": (lambda r: _replace_line(r / "list_attr_celeba.txt", 2, " ".join(ATTR_NAMES[:-1]) + " smiling"), [],
                       ["list_attr_celeba.txt: line 2:", "'Smiling' appears twice"]),
    "bad split code": (lambda r: _replace_line(r / "list_eval_partition.txt", 4, "000004.jpg 3"), [],
                       ["list_eval_partition.txt: line 4:", "expected split code 0 (train), 1 (valid) or 2 (test)", "'3'"]),
    "bad identity": (lambda r: _replace_line(r / "identity_CelebA.txt", 2, "000002.jpg 12a"), [],
                     ["identity_CelebA.txt: line 2:", "integer identity", "'12a'"]),
    "mismatched names": (lambda r: _replace_line(r / "list_eval_partition.txt", 3, "000009.jpg 0"), [],
                         ["list_eval_partition.txt: line 3:", "expected file name '000003.jpg'", "line 5 of list_attr_celeba.txt",
                          "found '000009.jpg'"]),
    "fewer identity rows": (lambda r: _replace_line(r / "identity_CelebA.txt", 7, ""), [],
                            ["identity_CelebA.txt", "has 6 rows", "has 7"]),
    "lone CR line ends": (lambda r: (r / "identity_CelebA.txt").write_bytes((r / "identity_CelebA.txt").read_bytes().replace(b"\r\n", b"\r")),
                          [], ["identity_CelebA.txt: lines end in a lone CR"]),
    "missing image": (lambda r: (r / "img_align_celeba" / "000003.jpg").unlink(), [],
                      ["img_align_celeba/000003.jpg: image is missing", "line 5 of", "list_attr_celeba.txt"]),
    "missing file": (lambda r: (r / "identity_CelebA.txt").unlink(), [],
                     ["identity_CelebA.txt: required file is missing"]),
    "misspelt attribute": (lambda r: None, ["--target", "Atractive"],
                           ["unknown attribute 'Atractive'", "did you mean 'Attractive'?"]),
    "misspelt covariate": (lambda r: None, ["--target", "Attractive", "--covariates", "Young,Mael"],
                           ["unknown attribute 'Mael'", "did you mean 'Male'?"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_exits_2_naming_file_and_line(tmp_path, capsys, case):
    breaker, extra, fragments = MALFORMED[case]
    root = write_handmade(tmp_path / "celeba")
    breaker(root)
    assert cli(["data", "info", str(tmp_path), *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("covfuse data: error:")
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_malformed_input_in_a_real_process_has_no_traceback(tmp_path):
    root = write_handmade(tmp_path)
    _replace_line(root / "list_attr_celeba.txt", 4, _attr_row("000002.jpg", ["1"] * 39 + ["2"]))
    proc = subprocess.run([sys.executable, "-m", "covfuse.cli", "data", "info", str(root)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "list_attr_celeba.txt: line 4:" in proc.stderr and "'Young'" in proc.stderr
