"""Suite-wide settings: one torch thread per pytest-xdist worker (the CI machine has 2 cores)."""
import os

import matplotlib

matplotlib.use("Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # Two workers with two threads each on two cores mostly spin; one thread each is ~2-5x faster.
    torch.set_num_threads(1)
