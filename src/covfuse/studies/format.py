"""How the study reports write numbers and user text: one rule each, shared by the markdown report, the HTML
report, the search's tuning table and the JSON files (report.json, results.json, explain.json)."""
from __future__ import annotations

import math

import numpy as np


def sig(value, digits: int = 4) -> str:
    """A setting or score to ``digits`` significant digits, trailing zeros kept (0.6940, 0.0007036); integers,
    strings and booleans as they are."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return "–"
    text = f"{value:#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]|<>#"})


def md_escape(value) -> str:
    """User text (cell names, settings, covariate names) for a markdown table or line: markdown's own characters
    and HTML's ``<``/``>`` escaped, so a name shows as written and cannot break the table or inject HTML."""
    return " ".join(str(value).split()).translate(_MD_SPECIAL)


def settings_text(settings: dict) -> str:
    """``optim.lr=0.0007036, model.fusion=film``: a settings mapping, numbers via :func:`sig`."""
    return ", ".join(f"{k}={sig(v)}" for k, v in settings.items())


def sd_text(sd, digits: int = 3) -> str:
    """The SD across runs, or — where it is undefined (a cell with one run)."""
    return "—" if sd is None or (isinstance(sd, float) and not math.isfinite(sd)) else f"{sd:.{digits}f}"


def num_text(value, digits: int = 3) -> str:
    """A score to ``digits`` decimals, or – where it is missing or not finite."""
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def ci_text(lo_hi, digits: int = 3, sign: bool = False) -> str:
    """`` [lo, hi]`` after an estimate (signed for a difference), or '' where the interval is missing."""
    lo, hi = lo_hi or (None, None)
    if lo is None:
        return ""
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    return f" [{f.format(lo)}, {f.format(hi)}]"


def p_text(p) -> str:
    """A p-value: three decimals, two significant digits below 0.001, – where it is missing or not finite."""
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def json_safe(value):
    """``value`` for strict JSON: every NaN / infinite float (an undefined test, e.g. across one run; an all-zero
    map's shares) becomes null, NumPy floats become floats, tuples lists."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
