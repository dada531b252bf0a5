"""How the lab writes a number: one rule per kind of quantity (counts, bytes, measured values, ratios, intervals,
relative differences), used by every table, sentence and plot."""

from __future__ import annotations

import math

import pandas as pd

from .statistics import Interval, percent_text

MIB = 2**20


def missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _scaled(value: float, base: int, units: list[str], decimals: list[tuple[int, int, int]], sep: str) -> str:
    """Pick the unit, then re-check after rounding so 999.96k reads 1.00M rather than 1000.0k."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for i, unit in enumerate(units):
        scaled = value / base**i
        big, mid, small = decimals[i]
        places = big if scaled >= 100 else mid if scaled >= 10 else small
        text = f"{scaled:.{places}f}"
        if float(text) < base or i == len(units) - 1:
            return f"{sign}{text}{sep}{unit}"
    raise AssertionError("unreachable")


def format_count(n: float | None) -> str:
    """Parameter and token counts: 812, 811k, 2.44M, 134.5M, 1.10B ("—" when missing)."""
    if missing(n):
        return "—"
    if abs(n) < 1000:
        return f"{n:.0f}"
    return _scaled(float(n), 1000, ["", "k", "M", "B", "T"],
                   [(0, 0, 0), (0, 1, 2), (1, 1, 2), (1, 1, 2), (1, 1, 2)], "")


def format_bytes(n: float | None) -> str:
    """Binary units, as the memory and artifact columns (MiB): 812 B, 1.50 KiB, 18.7 MiB, 2.32 GiB."""
    if missing(n):
        return "—"
    if abs(n) < 1024:
        return f"{n:.0f} B"
    return _scaled(float(n), 1024, ["B", "KiB", "MiB", "GiB", "TiB"],
                   [(0, 0, 0), (1, 1, 2), (1, 1, 2), (1, 1, 2), (1, 1, 2)], " ")


def format_number(x: float | None) -> str:
    """A measured value with about three significant digits: 2,377 · 161 · 39.9 · 7.34 ("—" when missing)."""
    if missing(x):
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def format_ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def format_percent(x: float | None, signed: bool = False) -> str:
    """A relative size in percent (statistics.percent_text, the rule the verdicts use too); "—" when missing."""
    return "—" if missing(x) else percent_text(x, signed)


def decimals_for(x: float) -> int:
    return 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2


def format_interval(v: object, decimals: int | None = None) -> str:
    """An Interval as '15.31 ± 0.42' (decimals from the size when not given), a plain number as format_number."""
    if isinstance(v, Interval):
        return v.text(decimals_for(v.mean) if decimals is None else decimals)
    if missing(v):
        return "—"
    return format_number(v) if decimals is None else f"{v:.{decimals}f}"


__all__ = ["MIB", "decimals_for", "format_bytes", "format_count", "format_interval", "format_number",
           "format_percent", "format_ratio", "missing"]
