"""From a results table to the content of law.json: groups, saturated cells, both forms, held-out errors.

- **Groups.** One law per group of ``by`` (default: model, benchmark, ratio, method), and a
  *combined* law per (model, benchmark) across its ratios and methods, as the paper fits one
  law per model.
- **Saturation** (``exclude_saturated``): cells whose ΔL the law cannot describe are left out
  and listed with their reason; both rules read recall, not ΔL. *Saturated*: every record is
  certified, or recalled exactly (the rank holds more than the cell asks of it; ΔL then says
  nothing about how much more). *Floor*: no record is recalled and the final loss is within
  margin × the format floor of that floor (``format_floor_loss``: the loss of a model that
  knows only the answers' format, memlaw.data.information), i.e. nothing beyond the format is
  stored. Tables without a format floor (written before it existed) fall back to the flat-
  column test: in one setting (model, benchmark, ratio, method) at one length, no cell recalls
  a record and the mean ΔL per rank spans at most margin × its mean.
- **Forms.** Every group is fitted in each form (memlaw.law.forms) with AIC and BIC.
- **Holdout** (``holdout="rank>=16"``): each form is also fitted on the group's other rows
  and scored (MAPE, R²) on the held-out rows: extrapolation error, which in-sample R² does
  not measure. The laws stored are still fitted on all rows; the holdout picks the
  *preferred* form (lowest held-out MAPE; without a holdout, the paper's).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import MemlawError
from ..tables import py_value, row_keys
from .fit import ParametricMemoryLaw, data_problem, mape, r2_score
from .forms import DEFAULT_FORM, FORMS

GROUP_KEYS = ("model", "benchmark", "ratio", "method")  # the finest setting law.json keys a group by
COMBINED_KEYS = ("model", "benchmark")  # the combined law: one per model and benchmark
POINT_COLUMNS = ("rank", "length", "delta_loss")
TARGETS = {  # what a law describes (memlaw fit --target)
    "delta_loss": "ΔL, the loss reduction per trained token (the paper's target)",
    "memorized_delta_loss": "the part of ΔL below the format floor: what stored records rather than the format",
}
SATURATION_MARGIN = 0.05
OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
             "<": operator.lt}
CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")


# ---------------------------------------------------------------------- holdout
@dataclass(frozen=True)
class Holdout:
    """Cells chosen by conditions on numeric columns, all of which must hold ("rank>=16,length>4000"): those
    held out of a fit (--holdout), or those a fit keeps (--only; `flag` names the option in messages).

    A value may be `max` or `min`: the column's largest or smallest value in the table
    ("rank>=max" holds out the largest rank).
    """

    text: str
    conditions: tuple[tuple[str, str, str], ...]
    flag: str = "--holdout"

    @classmethod
    def parse(cls, text: str, flag: str = "--holdout") -> Holdout:
        conditions = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = CONDITION.match(part)
            if not m:
                raise MemlawError(f"{flag}: expected COLUMN OP VALUE (OP one of {' '.join(OPERATORS)}), got {part!r}")
            column, op, value = m.groups()
            if value not in ("max", "min"):
                try:
                    float(value)
                except ValueError:
                    raise MemlawError(f"{flag} {part!r}: {value!r} is not a number, max or min") from None
            conditions.append((column, op, value))
        if not conditions:
            raise MemlawError(f"{flag} is empty")
        return cls(text, tuple(conditions), flag)

    def mask(self, rows: Any) -> np.ndarray:
        """Which rows are held out."""
        import pandas as pd

        held = np.ones(len(rows), dtype=bool)
        for column, op, value in self.conditions:
            if column not in rows.columns:
                raise MemlawError(f"{self.flag}: no column {column!r} in the results (have: {', '.join(map(str, rows.columns))})")
            values = pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            if np.isnan(values).all():
                raise MemlawError(f"{self.flag}: column {column!r} has no numeric values")
            bound = np.nanmax(values) if value == "max" else np.nanmin(values) if value == "min" else float(value)
            held &= OPERATORS[op](values, bound)
        return held

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------- saturation
def regime_counts(rows: Any, margin: float = SATURATION_MARGIN) -> dict[str, int]:
    """How many of the ok rows sit at an edge of the law's regime (issue 25's measure of a grid): saturated by
    recall (every record recalled or certified), ΔL within `margin` of its ceiling (the initial loss), and the
    final loss within `margin` of the format floor or above it (nothing beyond the answers' format stored).
    Columns a table lacks count no cell."""
    n = len(rows)
    em, certified = _column(rows, "exact_match"), _column(rows, "certified_fraction")
    initial, delta = _column(rows, "initial_loss"), _column(rows, "delta_loss")
    floor, final = _column(rows, "format_floor_loss"), _column(rows, "final_loss")
    with np.errstate(invalid="ignore"):
        return {"cells": n, "saturated": int(((em >= 1.0) | (certified >= 1.0)).sum()),
                "ceiling": int((delta >= (1 - margin) * initial).sum()),
                "floor": int((final >= (1 - margin) * floor).sum())}


def saturated_cells(rows: Any, margin: float = SATURATION_MARGIN) -> dict[int, str]:
    """Position in `rows` -> why that cell is out of the law's regime (saturated, or at the format floor),
    for the ok rows of a results table (see the module docstring)."""
    if not 0 < margin < 1:
        raise MemlawError(f"--saturation-margin must lie in (0, 1), got {margin}")
    needed = [c for c in ("exact_match",) if c not in rows.columns]
    if needed:
        raise MemlawError(f"--exclude-saturated needs the column(s) {', '.join(needed)}")
    em = rows["exact_match"].to_numpy(dtype=float)
    certified = _column(rows, "certified_fraction")
    out = {}
    for i in range(len(rows)):
        if em[i] >= 1.0 or certified[i] >= 1.0:
            out[i] = f"saturated: every record recalled (EM {em[i]:.3g}, certified {_percent(certified[i])})"
    floor, final = _column(rows, "format_floor_loss"), _column(rows, "final_loss")
    known = ~np.isnan(floor)
    for i in np.flatnonzero(known & (em == 0) & (final >= (1 - margin) * floor)):
        out.setdefault(int(i), f"floor: no record recalled and the final loss {final[i]:.4g} is within {margin:.0%} "
                               f"of the format floor {floor[i]:.4g} (nothing beyond the format stored)")
    setting = [c for c in GROUP_KEYS if c in rows.columns]
    for _, column in _split(rows, [*setting, "length"]).items():
        column = [i for i in column if not known[i]]  # cells without a format floor: the flat-column test
        ranks = rows.iloc[column]
        if not column:
            continue
        per_rank = ranks.groupby("rank")["delta_loss"].mean()
        if len(per_rank) < 2 or ranks["exact_match"].to_numpy(dtype=float).max() > 0:
            continue
        spread = float(per_rank.max() - per_rank.min()) / abs(float(per_rank.mean()) or 1.0)
        if spread <= margin:
            reason = (f"floor: no record recalled and ΔL flat over ranks {', '.join(map(str, per_rank.index))} "
                      f"(spread {spread:.1%} ≤ {margin:.0%}) at length {ranks['length'].iloc[0]}")
            for i in column:
                out.setdefault(i, reason)
    return dict(sorted(out.items()))


def _column(rows: Any, name: str) -> np.ndarray:
    """A numeric column as floats (NaN where missing, or everywhere if the table has no such column)."""
    import pandas as pd

    if name not in rows.columns:
        return np.full(len(rows), np.nan)
    return pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0%}"


# ---------------------------------------------------------------------- fitting
def fit_groups(
    df: Any,
    by: Sequence[str] = GROUP_KEYS,
    *,
    forms: Sequence[str] = tuple(FORMS),
    holdout: Holdout | None = None,
    only: Holdout | None = None,
    exclude_saturated: bool = False,
    saturation_margin: float = SATURATION_MARGIN,
    target: str = "delta_loss",
    **params: Any,
) -> dict[str, Any]:
    """Fit every form per group of `by` and per (model, benchmark); the content of law.json (without "source").

    Uses rows with status "ok" (every row if there is no status column) and finite rank,
    length and `target` (TARGETS; the law's y, stored in law.json). Group columns absent from the table are left out of the keys; missing
    values (e.g. ratio on PhoneBook) form one group value, None. ``params`` go to
    ParametricMemoryLaw. Groups whose points cannot identify the law are listed under "skipped".
    """
    import pandas as pd

    unknown = [c for c in by if c not in GROUP_KEYS]
    if unknown or not by:
        raise MemlawError(f"--by: unknown column(s) {', '.join(unknown)}; choose from {', '.join(GROUP_KEYS)}"
                          if unknown else "--by names no column")
    bad_forms = [f for f in forms if f not in FORMS]
    if bad_forms or not forms:
        raise MemlawError(f"unknown law form(s) {', '.join(bad_forms) or '(none given)'}; choose from {', '.join(FORMS)}")
    if target not in TARGETS:
        raise MemlawError(f"--target: unknown {target!r}; choose from {', '.join(TARGETS)}")
    missing = [c for c in POINT_COLUMNS if c not in df.columns]
    if target not in df.columns:
        missing.append(target)
    if missing:
        extra = " (a table written before memlaw counted information: re-evaluate its cells)" if target in missing else ""
        raise MemlawError(f"missing column(s) {', '.join(missing)}{extra} (have: {', '.join(map(str, df.columns))})")
    columns = ("rank", "length", target)
    rows = df[df["status"].isin(["ok"]).to_numpy(dtype=bool)] if "status" in df.columns else df
    points = rows[list(dict.fromkeys((*POINT_COLUMNS, target)))].apply(pd.to_numeric, errors="coerce")  # non-numbers -> NaN
    keep = np.isfinite(points[list(columns)].to_numpy(dtype=float, na_value=np.nan)).all(axis=1)
    rows = rows.assign(**points)[keep].reset_index(drop=True)
    if len(rows) == 0:
        raise MemlawError(f"no rows with status 'ok' and finite rank, length and {target}")

    if only is not None:  # the cells the fit is about; saturation is judged among them
        rows = rows[only.mask(rows)].reset_index(drop=True)
        if len(rows) == 0:
            raise MemlawError(f"--only {only}: no cell matches")
    regime = {**regime_counts(rows, saturation_margin), "margin": saturation_margin}  # before any exclusion
    excluded = []
    if exclude_saturated:
        reasons = saturated_cells(rows, saturation_margin)
        excluded = [_excluded_entry(rows.iloc[i], reason) for i, reason in sorted(reasons.items())]
        rows = rows.drop(index=list(reasons)).reset_index(drop=True)
        if len(rows) == 0:
            raise MemlawError(f"every one of the {len(excluded)} cells is saturated; nothing left to fit")
    held = holdout.mask(rows) if holdout is not None else None

    out: dict[str, Any] = {"groups": [], "combined": [], "skipped": []}
    for part, cols in (("groups", [c for c in by if c in rows.columns]), ("combined", [c for c in COMBINED_KEYS if c in rows.columns])):
        for key, members in sorted(_split(rows, cols).items(), key=lambda kv: tuple(str(v) for v in kv[0])):
            named = dict(zip(cols, key))
            r, ell, y = rows.iloc[members][list(columns)].to_numpy(dtype=float).T
            problem = data_problem(r, ell, y)
            if problem:
                out["skipped"].append({"key": named, **({"combined": True} if part == "combined" else {}), "reason": problem})
                continue
            group = fit_group(r, ell, y, None if held is None else held[members], forms, params)
            out[part].append({"key": named, **group})
    if not out["groups"] and not out["combined"]:
        raise MemlawError(f"cannot fit the memory law: {out['skipped'][0]['reason']}")
    return {
        "version": 2,
        "target": target,
        "forms": {name: FORMS[name].formula for name in forms},
        "group_cols": [c for c in by if c in rows.columns],
        "combined_cols": [c for c in COMBINED_KEYS if c in rows.columns],
        "holdout": None if holdout is None else str(holdout),
        "only": None if only is None else str(only),
        "saturation": {"excluded": exclude_saturated, "margin": saturation_margin},
        "regime": regime,
        "estimator": dict(sorted(params.items())),  # with the keys above: every option that rebuilds this file
        **out,
        "excluded": excluded,
    }


def fit_group(r: np.ndarray, ell: np.ndarray, y: np.ndarray, held: np.ndarray | None,
              forms: Sequence[str], params: dict) -> dict[str, Any]:
    """One group: each form fitted on every row; with `held`, also fitted without and scored on the held-out rows."""
    laws, errors, scores = {}, {}, {}
    for form in forms:
        try:
            laws[form] = ParametricMemoryLaw(form=form, **params).fit(r, ell, y).to_dict()
        except MemlawError as e:
            errors[form] = str(e)
            continue
        if held is not None:
            scores[form] = holdout_score(r, ell, y, held, form, params)
    if not laws:
        raise MemlawError("; ".join(f"{form}: {e}" for form, e in errors.items()))
    group: dict[str, Any] = {"n": int(len(y)), "ranks": sorted({float(v) for v in r}), "lengths": sorted({float(v) for v in ell}),
                             "preferred": preferred_form(laws, scores), "laws": laws}  # ranks/lengths: what plan may extrapolate from
    if held is not None:
        group["holdout"] = scores
    if errors:
        group["errors"] = errors
    return group


def holdout_score(r: np.ndarray, ell: np.ndarray, y: np.ndarray, held: np.ndarray, form: str, params: dict) -> dict:
    """Fit `form` on the rows not held out (no bootstrap) and score it on the held-out rows."""
    score: dict[str, Any] = {"n_train": int((~held).sum()), "n_heldout": int(held.sum())}
    if not held.any():
        return {**score, "error": "no row is held out"}
    train = ~held
    problem = data_problem(r[train], ell[train], y[train])
    if problem:
        return {**score, "error": f"the rows left cannot identify the law: {problem}"}
    fit_params = {**params, "n_bootstrap": 0}
    try:
        law = ParametricMemoryLaw(form=form, **fit_params).fit(r[train], ell[train], y[train])
    except MemlawError as e:
        return {**score, "error": str(e)}
    pred = law.predict(r[held], ell[held])
    r2 = r2_score(y[held], pred) if held.sum() >= 2 else math.nan
    return {**score, "mape": mape(y[held], pred), "r2": r2}


def preferred_form(laws: dict[str, dict], scores: dict[str, dict]) -> str:
    """The form with the lowest held-out MAPE when there are held-out scores, else the paper's (if fitted)."""
    scored = {f: s["mape"] for f, s in scores.items() if f in laws and math.isfinite(s.get("mape", math.nan))}
    if scored:
        return min(scored, key=lambda f: (scored[f], f != DEFAULT_FORM))
    return DEFAULT_FORM if DEFAULT_FORM in laws else next(iter(laws))


def _excluded_entry(row: Any, reason: str) -> dict[str, Any]:
    entry = {"cell": py_value(row["cell"])} if "cell" in row.index else {}
    entry["key"] = {k: py_value(row[k]) for k in GROUP_KEYS if k in row.index}
    entry.update({k: py_value(row[k]) for k in ("rank", "length", "seed") if k in row.index})
    return {**entry, "reason": reason}


def _split(rows: Any, cols: Sequence[str]) -> dict[tuple, list[int]]:
    """Group value tuple (missing -> None) -> row positions; unlike DataFrame.groupby, None is a value."""
    members: dict[tuple, list[int]] = {}
    for pos, key in enumerate(row_keys(rows, tuple(cols)) if cols else [()] * len(rows)):
        members.setdefault(key, []).append(pos)
    return members
