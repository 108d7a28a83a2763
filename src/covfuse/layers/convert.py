"""Turn chosen convs of an unmodified model into hybrid convs, without touching its ``forward``.

The convs are replaced in place (same module names, so the original state-dict keys still load);
the returned :class:`CovariateModel` takes ``forward(x, covariates)`` and runs the original
``forward(x)`` with the covariates visible to every conditioned layer through
:mod:`covfuse.layers.context`.
"""
from __future__ import annotations

import difflib
from typing import Any, Sequence

from torch import Tensor, nn

from covfuse.layers.context import check_covariates, use_covariates
from covfuse.layers.hybrid import HYBRID_FOR_CONV

LayerSpec = str | Sequence[str | int]
SELECTORS = ("first", "last", "all")


def conv_names(model: nn.Module) -> list[str]:
    """Names of the model's plain Conv1d/2d/3d modules, in definition order."""
    return [name for name, m in model.named_modules() if type(m) in HYBRID_FOR_CONV]


def select_names(candidates: Sequence[str], layers: LayerSpec, what: str, owner: str) -> list[str]:
    """Resolve "first"/"last"/"all", a name, or a list of names / indices against ``candidates``.

    Shared by :func:`convert` (convs) and :mod:`covfuse.models.fusion` (norms, convs, stage ends); a
    ``ValueError`` says what is wrong and suggests the closest name.
    """
    if not candidates:
        raise ValueError(f"{owner} has no {what}")
    if isinstance(layers, str):
        if layers in SELECTORS:
            return {"first": list(candidates[:1]), "last": list(candidates[-1:]), "all": list(candidates)}[layers]
        layers = [layers]  # a single module name
    names: list[str] = []
    for item in layers:
        if isinstance(item, int):
            if not -len(candidates) <= item < len(candidates):
                raise ValueError(f"{what} index {item} is out of range: {owner} has {len(candidates)}")
            item = candidates[item]
        elif item not in candidates:
            close = difflib.get_close_matches(str(item), list(candidates), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(candidates[:8]) + (", ..." if len(candidates) > 8 else "")
            raise ValueError(f"{item!r} is not one of the {what} of {owner}{hint}; choose from {shown}")
        if item not in names:
            names.append(item)
    return names


def resolve_layers(model: nn.Module, layers: LayerSpec) -> list[str]:
    """Module names for ``layers``: "first"/"last"/"all", or a list of names or conv-list indices."""
    return select_names(conv_names(model), layers, "convolutions", type(model).__name__)


class CovariateModel(nn.Module):
    """Wraps a model whose conditioned layers read covariates from the context: ``forward(x, covariates)``."""

    def __init__(self, model: nn.Module, num_covariates: int) -> None:
        super().__init__()
        self.model = model
        self.num_covariates = num_covariates

    def forward(self, x: Tensor, covariates: Tensor, *args: Any, **kwargs: Any) -> Any:
        check_covariates(covariates, x.shape[0], self.num_covariates, x.device)
        with use_covariates(covariates):
            return self.model(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_covariates={self.num_covariates}"


def convert(
    model: nn.Module,
    layers: LayerSpec,
    num_covariates: int,
    init: str = "zeros",
    backend: str = "auto",
) -> CovariateModel:
    """Replace the chosen convs of ``model`` (in place) by hybrid convs and return a
    :class:`CovariateModel` whose ``forward(x, covariates)`` equals ``model.forward(x)`` with those
    convs made hybrid. With ``init="zeros"`` the result computes exactly what ``model`` did.

    ``layers``: "first", "last", "all", a module name, or a list of names / indices into
    :func:`conv_names`. Works inside ``nn.Sequential`` and on unmodified torchvision models.
    """
    for name in resolve_layers(model, layers):
        conv = model.get_submodule(name)
        hybrid = HYBRID_FOR_CONV[type(conv)].from_conv(conv, num_covariates, init=init, backend=backend)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, hybrid)
    return CovariateModel(model, num_covariates)
