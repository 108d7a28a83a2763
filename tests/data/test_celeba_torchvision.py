"""What docs/data.md says about torchvision and the twin: stock CelebA refuses it (md5 check), the
documented one-method subclass reads the same rows and values as covfuse's reader."""
from __future__ import annotations

import numpy as np
import pytest
from torchvision.datasets import CelebA

from covfuse.data import read_celeba
from data_fixtures import make_twin


class TwinCelebA(CelebA):
    def _check_integrity(self) -> bool:  # as in docs/data.md
        return True


def test_stock_torchvision_refuses_the_twin_and_the_documented_subclass_reads_it(tmp_path_factory):
    out = make_twin(tmp_path_factory, n=200)
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        CelebA(str(out), split="valid", target_type="attr")
    theirs = TwinCelebA(str(out), split="valid", target_type="attr")
    meta = read_celeba(out)
    valid = meta.split == 1
    assert list(theirs.filename) == list(np.array(meta.filenames)[valid])
    assert np.array_equal(theirs.attr.numpy(), meta.attrs[valid])
