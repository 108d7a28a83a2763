"""Suite-wide settings: one torch thread per pytest-xdist worker (the CI machine has 2 cores), `auto` by
its rule unless a test tunes, and a throw-away tuning cache."""
import atexit
import os
import shutil
import tempfile

import matplotlib
import pytest

matplotlib.use("Agg")

# Triton kernels (the hybrid conv's `triton` back-end) run on Triton's CPU interpreter in tests. Triton
# reads this when it is first imported (torch.compile imports it too), so it is set before any test runs;
# `auto` never picks `triton` off CUDA, and inductor's CPU code generation does not use Triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

# `auto` tunes hybrid convs on first use by default; the suite follows the rule (cheap and the same on
# every machine) except where a test turns tuning on, and never reads or writes the user's tuning cache
# (~/.cache/covfuse): each test process uses a fresh folder, which its subprocesses inherit.
os.environ.setdefault("COVFUSE_AUTOTUNE", "0")
os.environ["COVFUSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="covfuse-test-cache-")
atexit.register(shutil.rmtree, os.environ["COVFUSE_CACHE_DIR"], ignore_errors=True)

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # Two workers with two threads each on two cores mostly spin; one thread each is ~2-5x faster.
    torch.set_num_threads(1)


@pytest.fixture
def small_monai(monkeypatch):
    """MONAI's 3D ResNet class at a tenth of resnet10's width (same modules and names; seconds, not minutes)."""
    from monai.networks.nets import ResNet

    from covfuse.models import volumetric

    monkeypatch.setitem(volumetric.BUILDERS, "monai-resnet10", lambda: ResNet(
        block="basic", layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], spatial_dims=3, n_input_channels=1,
        num_classes=1000))
