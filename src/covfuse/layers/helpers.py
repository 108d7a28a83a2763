"""Tiny option checks shared by the conditioned layers: conv sizes and padding (timm's `to_2tuple` idea)
and the ``init`` choice."""
from __future__ import annotations

from typing import Sequence, Union

IntOrTuple = Union[int, Sequence[int]]
INITS = ("identity", "reference")


def check_init(init: str) -> float:
    """Check ``init`` is one of :data:`INITS`; return the offset of a predicted scale: 1 for ``identity``
    (the layer predicts 1 + delta with a zero last layer, so it starts as the identity), 0 for
    ``reference`` (the scale itself, as the method's authors)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return 1.0 if init == "identity" else 0.0


def to_ntuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    """Expand an int to an n-tuple; check a sequence has length n and holds ints."""
    if isinstance(value, int):
        return (value,) * n
    out = tuple(value)
    if len(out) != n or not all(isinstance(v, int) for v in out):
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return out


def normalize_padding(padding: IntOrTuple | str, n: int, stride: tuple[int, ...]) -> tuple[int, ...] | str:
    """Return an n-tuple, or 'same'/'valid' as torch's functional convs accept them."""
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        if padding == "same" and any(s != 1 for s in stride):
            raise ValueError("padding='same' is not supported for strided convolutions (as in nn.Conv)")
        return (0,) * n if padding == "valid" else "same"
    return to_ntuple(padding, n, "padding")
