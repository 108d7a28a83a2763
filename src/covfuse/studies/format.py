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
        return DASH
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


DASH = "—"
"""What every report format shows for a number that is missing (its reason in a footnote, or in JSON a
``<key>_reason`` beside the null)."""

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 cell``, ``2 cells`` (``many`` for irregular plurals: ``plural(1, "person", "people")``)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def num_text(value, digits: int = 3, sign: bool = False) -> str:
    """A score as the markdown and the HTML report show it (``digits`` decimals, signed for a difference);
    — where it is missing or not finite."""
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
        return DASH
    return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"


def sd_text(sd, digits: int = 3) -> str:
    """The SD across runs, or — where it is undefined (a cell with one run)."""
    return num_text(sd, digits)


def ci_text(lo_hi, digits: int = 3, sign: bool = False) -> str:
    """`` [lo, hi]`` after an estimate (signed for a difference), or '' where the interval is missing."""
    lo, hi = lo_hi or (None, None)
    if lo is None or hi is None:
        return ""
    return f" [{num_text(lo, digits, sign)}, {num_text(hi, digits, sign)}]"


def p_text(p) -> str:
    """A p-value: three decimals, two significant digits below 0.001, — where it is missing or not finite."""
    if p is None or not math.isfinite(p):
        return DASH
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


class Notes:
    """The footnotes of one document: every distinct reason gets a number the first time it is used; a
    missing number shows as — with that number (¹, ², ...), the same in the markdown and the HTML report."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.shown = 0

    def dash(self, reason: str | None) -> str:
        if not reason:
            return DASH
        if reason not in self.reasons:
            self.reasons.append(reason)
        return DASH + str(self.reasons.index(reason) + 1).translate(_SUPERSCRIPT)

    def flush(self) -> list[tuple[str, str]]:
        """(marker, reason) of the notes not listed yet."""
        out = [(str(i + 1).translate(_SUPERSCRIPT), r) for i, r in enumerate(self.reasons) if i >= self.shown]
        self.shown = len(self.reasons)
        return out


def shown(value, reason: str | None, notes: Notes, digits: int = 3, sign: bool = False) -> str:
    """``value`` as a report shows it, or — with a footnote for ``reason`` where it is missing."""
    return num_text(value, digits, sign) if num_text(value) != DASH else notes.dash(reason)


def csv_number(value) -> str:
    """A number in report.csv: the shortest text that reads back as the float report.json holds; empty when null."""
    if value is None or isinstance(value, bool) or not math.isfinite(float(value)):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


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
