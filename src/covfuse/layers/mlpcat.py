"""MLP-concat head (DAFT's ``ConcatHNNMCM`` baseline, Pölsterl et al. 2021): covariates through their own MLP, then concatenated.

``y = FC([f ⊕ ReLU(T z)])`` for pooled image features f: a Linear-ReLU on the covariates (width
``hidden``: the class default 7 of ``ConcatHNNMCM``; DAFT's training code sets
int((4 n_basefilters + K) / 7), which the model builder uses) and one FC layer on the concatenation. The FC layer is kept as
two blocks, ``image`` (the backbone's own head) and ``covariates`` (zero at initialisation, no
bias), so the head starts as the image-only head; the function is the reference's exactly.
The covariates come from the context (:mod:`covfuse.layers.context`) or the ``covariates`` argument.

Where covfuse differs from the reference (ai-med/DAFT, ``daft/networks/vol_networks.py``): only in
the initialisation of the covariate block (zero instead of PyTorch's default, ``init="reference"``
restores it: U(+-1/sqrt(F + hidden)) as the reference's one ``Linear(F + hidden, ·)``), so that the
comparison starts from the image-only model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from covfuse.layers.context import current_covariates
from covfuse.layers.helpers import check_init


class MLPCatHead(nn.Module):
    """``image(features) + covariates(ReLU(mlp(z)))``: one FC layer on [features ⊕ ReLU(mlp(z))]."""

    def __init__(self, in_features: int, num_covariates: int, out_features: int, hidden: int = 7,
                 image: nn.Linear | None = None, init: str = "identity") -> None:
        super().__init__()
        if hidden < 1 or num_covariates < 1:
            raise ValueError(f"hidden and num_covariates must be >= 1, got {hidden} and {num_covariates}")
        self.image = image if image is not None else nn.Linear(in_features, out_features)
        self.mlp = nn.Linear(num_covariates, hidden)
        self.covariates = nn.Linear(hidden, out_features, bias=False)
        check_init(init)
        if init == "identity":
            nn.init.zeros_(self.covariates.weight)
        else:  # the block of the reference's Linear(F + hidden, out): its fan-in is F + hidden
            bound = 1.0 / (in_features + hidden) ** 0.5
            nn.init.uniform_(self.covariates.weight, -bound, bound)

    def forward(self, features: Tensor, covariates: Tensor | None = None) -> Tensor:
        z = current_covariates("MLPCatHead") if covariates is None else covariates
        return self.image(features) + self.covariates(torch.relu(self.mlp(z.to(self.mlp.weight.dtype))))
