"""Small pandas/numpy helpers shared by the analysis and the report.

They live apart from both so that neither imports the other for plumbing; this module
imports nothing from memlaw, so it can never close an import cycle.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd


def py_value(v: Any) -> Any:
    """A plain Python value: numpy scalars unwrapped, NaN/NA as None (JSON and CSV writers need plain values)."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return py_value(v.item())
    return v


def none_for_missing(col: pd.Series) -> pd.Series:
    """The column as objects with None for missing values, so a missing ratio is one group value, None."""
    return col.astype(object).where(col.notna(), None)


def finite(x: Any) -> float | None:
    """x as a float, or None when missing, not a number or not finite (the fitter writes NaN for an undefined R²)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def plain_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Nullable extension columns as plain ones: strings as objects with None, integers as int64 (float64 with NA).

    Parquet round trips give pandas' nullable dtypes, whose pd.NA breaks comparisons and matplotlib.
    """
    out = df.copy()
    for col in out.columns:
        dtype = out[col].dtype
        if isinstance(dtype, pd.StringDtype) or dtype == object:
            out[col] = none_for_missing(out[col])
        elif pd.api.types.is_extension_array_dtype(dtype) and pd.api.types.is_numeric_dtype(dtype):
            out[col] = out[col].astype("float64" if out[col].isna().any() else dtype.numpy_dtype)
    return out


def cell_sort_key(key: tuple) -> tuple:
    """Sort key for a group or cell key: None first, ratios like "r20" numerically, numbers as numbers."""
    out = []
    for v in key:
        if v is None:
            out.append((0, 0, ""))
        elif isinstance(v, str) and re.fullmatch(r"r\d+", v):
            out.append((1, int(v[1:]), v))
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out.append((1, float(v), ""))
        else:
            out.append((1, 0, str(v)))
    return tuple(out)


def row_keys(df: pd.DataFrame, keys: tuple[str, ...]) -> list[tuple]:
    """Each row's values of `keys` as a tuple of plain values (None for missing), so keys compare and hash."""
    return list(zip(*(map(py_value, df[k]) for k in keys))) if len(df) else []


def split_by(df: pd.DataFrame, keys: tuple[str, ...]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key, rows) per distinct value of `keys`, in cell_sort_key order; None is a value like any other.

    Unlike DataFrame.groupby, missing values form a group instead of being dropped.
    """
    index: dict[tuple, list[int]] = {}
    for i, key in enumerate(row_keys(df, keys)):
        index.setdefault(key, []).append(i)
    return [(key, df.iloc[index[key]]) for key in sorted(index, key=cell_sort_key)]


def spread(values, k: int) -> list:
    """At most k of the sorted distinct values, evenly spread and keeping both ends, for figures that cap panels."""
    values = sorted(set(values), key=lambda v: cell_sort_key((v,)))
    if len(values) <= k:
        return values
    return [values[i] for i in sorted(set(np.round(np.linspace(0, len(values) - 1, max(k, 1))).astype(int)))]


def csv_rows(df: pd.DataFrame) -> list[dict]:
    """The table's rows as dicts of plain values, ready for memlaw.io.write_csv."""
    return [{k: py_value(v) for k, v in row.items()} for row in df.to_dict("records")]


def format_p(p: float | None) -> str:
    """"p = 0.0012" for display; a p-value that underflowed to 0 shows as an upper bound."""
    if p is None:
        return "p undefined"
    return "p < 1e-300" if p == 0 else f"p = {p:.2g}"


def format_rho(s: Any) -> str:
    """"Spearman ρ = 0.351 (n = 472, p = 4.3e-15)" from a {"rho", "p", "n"} mapping; undefined ρ said so."""
    if s["rho"] is None:
        return f"Spearman ρ undefined (n = {s['n']})"
    return f"Spearman ρ = {s['rho']:.3f} (n = {s['n']}, {format_p(s['p'])})"
