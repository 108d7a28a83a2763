"""Tiny option normalisers shared by the conditioned conv layers (timm's `to_2tuple` idea)."""
from __future__ import annotations

from typing import Sequence, Union

IntOrTuple = Union[int, Sequence[int]]


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
