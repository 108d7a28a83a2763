"""covfuse.io: atomic writes leave either the whole new file or the old state, never a temp file."""
from __future__ import annotations

import pytest

from covfuse.io import atomic_path, atomic_write_bytes, atomic_write_text


def test_success_renames_over_the_target(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    assert atomic_write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "out.json"]


def test_atomic_path_yields_a_temp_in_the_same_folder_with_the_suffix(tmp_path):
    target = tmp_path / "fig.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        assert not target.exists()
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png" and not tmp.exists()


def test_failure_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "report.md"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_an_existing_file_untouched(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("precious")
    with pytest.raises(TypeError):
        atomic_write_text(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
