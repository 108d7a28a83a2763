"""covfuse.io: atomic writes leave either the whole new file or the old state, never a temp file."""
from __future__ import annotations

import pytest

from covfuse.io import atomic_path, atomic_write_text


def test_success_renames_over_the_target(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    assert atomic_write_text(target, "new\n") == target
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_open_would_give_under_the_umask(tmp_path, umask):
    import os
    import stat

    old = os.umask(umask)
    try:
        with open(tmp_path / "plain.txt", "w") as f:  # the reference: what a plain open() creates
            f.write("x")
        atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask


def test_a_full_disk_is_a_user_error_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from covfuse.errors import UserError

    target = tmp_path / "metrics.json"
    target.write_text("old")
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)  # half written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match="metrics.json: the disk is full"):
        atomic_write_text(target, "new contents\n")
    monkeypatch.undo()
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_trusted_refuses_a_pickle_payload_and_runs_none_of_it(tmp_path):
    import torch

    from covfuse.errors import UserError
    from covfuse.io import load_trusted

    marker = tmp_path / "MARKER"
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, path)
    with pytest.raises(UserError, match="refused: this weights file carries pickled Python objects"):
        load_trusted(path, what="weights file")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the reference: the payload is real and would have run
    assert marker.exists()
    torch.save({"weight": torch.ones(2)}, path)
    assert torch.equal(load_trusted(path)["weight"], torch.ones(2))  # plain weights still load
