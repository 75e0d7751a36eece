"""Phase-transition analysis (DESIGN §6): where free-run recall first fails, and whether the
earliest stubborn token (teacher-forced p_t <= 0.5) predicts it.

By the certificate (DESIGN §4), greedy decoding reproduces every token before a record's
earliest stubborn position, so its first free-run failure can only be at or after that
position. A failure before it, or a failure in a record with no stubborn token, is a
violation and points to a bug.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..errors import MemlawError
from ..io import write_csv, write_json
from ..law.lawfile import GROUP_KEYS
from ..rundir import RunDir
from ..sweep.results import sweep_table
from ..tables import cell_sort_key, csv_rows, finite, format_rho, none_for_missing, plain_dtypes, py_value, row_keys, split_by

CELL_KEYS = (*GROUP_KEYS, "length", "rank")
RECORD_COLUMNS = (
    "cell", *GROUP_KEYS, "rank", "length", "seed", "id",
    "target_len", "earliest_stubborn", "first_failure", "exact", "certified",
)
GRID_COLUMNS = (*CELL_KEYS, "bin", "rel_start", "rel_end", "mean_p", "stubborn_fraction", "records")
DEFAULT_BINS = 20
MAX_LISTED_VIOLATIONS = 20
SPEARMAN_KEYS = ("benchmark", "method")  # the paper's ρ is within one setting, not pooled over all
MAX_MATRIX_RECORDS = 32  # rows of a per-position grid: the cell's first records
MAX_MATRIX_POSITIONS = 400  # columns of a per-position grid; longer targets are min-pooled


@dataclass
class PhaseAnalysis:
    """The analysis of one sweep: the phase.json summary, one row per record, the probability grid."""

    summary: dict
    records: pd.DataFrame  # RECORD_COLUMNS
    grid: pd.DataFrame  # GRID_COLUMNS


@dataclass
class CellMatrix:
    """One cell's teacher-forced p_t per record and target position (the paper's per-position grids).

    Column c covers target positions [c·width, (c+1)·width) and holds the minimum p_t over them, so
    pooling a long target never hides a stubborn token.
    """

    probs: np.ndarray  # rows × columns; NaN past a record's end
    stubborn: np.ndarray  # rows × columns, bool: the column holds a stubborn token (p_t <= 0.5)
    failures: list[int | None]  # per row: the column of the first free-run failure, None when exact
    records: int  # records in the cell; the rows are the first min(records, max_records)
    positions: int  # target positions of the longest row, before pooling
    width: int  # target positions per column (1: not pooled)


# ---------------------------------------------------------------------- loading
def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """The sweep's results table (one row per cell); MemlawError if missing or malformed."""
    path = Path(sweep_dir) / "results.parquet"
    df = sweep_table(sweep_dir)  # rebuilt from the cells if it is missing or damaged
    missing = sorted({"cell", "status", "run_dir", "seed", *CELL_KEYS} - set(df.columns))
    if missing:
        raise MemlawError(f"{path} lacks the columns {', '.join(missing)}")
    return plain_dtypes(df)


def ok_cells(results: pd.DataFrame, sweep_dir: str | Path) -> pd.DataFrame:
    """The cells with status "ok"; MemlawError if there are none."""
    ok = results[results["status"] == "ok"]
    if ok.empty:
        raise MemlawError(f"no ok cells in {Path(sweep_dir) / 'results.parquet'} ({len(results)} cells, none finished)")
    return ok


def earliest_stubborn(stubborn_positions: Iterable[int] | None) -> int | None:
    """The first target position with p_t <= 0.5, or None for a certified record."""
    positions = list(stubborn_positions or [])
    return int(min(positions)) if positions else None


def record_row(cell: Mapping[str, Any], record: Mapping[str, Any]) -> dict:
    """One row of records.csv from a results row and one records.jsonl object."""
    row = {k: py_value(cell[k]) for k in ("cell", *GROUP_KEYS, "seed")}
    fail = record.get("first_failure")
    row.update(
        rank=int(cell["rank"]),
        length=int(cell["length"]),
        id=record.get("id"),
        target_len=len(record["target_probs"]),
        earliest_stubborn=earliest_stubborn(record.get("stubborn_positions")),
        first_failure=None if fail is None else int(fail),
        exact=bool(record["exact"]),
        certified=bool(record["certified"]),
    )
    return {k: row[k] for k in RECORD_COLUMNS}


def read_cell_records(path: Path) -> list[dict]:
    """The objects of one cell's records.jsonl; one MemlawError naming the file if it is damaged."""
    return RunDir(path.parent).read_records()


def min_pool(values: np.ndarray, width: int, reduce=np.fmin) -> np.ndarray:
    """Columns of a rows × positions array reduced in consecutive groups of `width` (the last may be short).

    np.fmin ignores NaN (a column is NaN only where every position is); np.logical_or pools masks.
    """
    rows, positions = values.shape
    columns = -(-positions // width)
    fill = np.nan if values.dtype.kind == "f" else False
    padded = np.full((rows, columns * width), fill, dtype=values.dtype)
    padded[:, :positions] = values
    return reduce.reduce(padded.reshape(rows, columns, width), axis=2)


def cell_matrix(records: list[Mapping[str, Any]], max_records: int = MAX_MATRIX_RECORDS,
                max_positions: int = MAX_MATRIX_POSITIONS) -> CellMatrix:
    """The per-position grid of one cell's records.jsonl objects: the first `max_records` records, targets
    min-pooled into at most `max_positions` columns."""
    shown = list(records[:max_records])
    positions = max((len(r["target_probs"]) for r in shown), default=0)
    probs = np.full((len(shown), positions), np.nan)
    stubborn = np.zeros((len(shown), positions), dtype=bool)
    for i, r in enumerate(shown):
        probs[i, : len(r["target_probs"])] = r["target_probs"]
        stubborn[i, [int(p) for p in r.get("stubborn_positions") or []]] = True
    width = max(1, -(-positions // max_positions))
    return CellMatrix(
        probs=min_pool(probs, width),
        stubborn=min_pool(stubborn, width, np.logical_or),
        failures=[None if r.get("first_failure") is None else int(r["first_failure"]) // width for r in shown],
        records=len(records),
        positions=positions,
        width=width,
    )


def cell_matrices(sweep_dir: str | Path, cells: pd.DataFrame, max_records: int = MAX_MATRIX_RECORDS,
                  max_positions: int = MAX_MATRIX_POSITIONS) -> dict[str, CellMatrix]:
    """cell name -> CellMatrix for the given results rows; cells without a records.jsonl are left out.

    Read on demand, for the cells a figure shows: the matrices are too large to keep for a whole sweep.
    """
    out = {}
    for cell in cells.to_dict("records"):
        path = RunDir(Path(sweep_dir) / str(cell["run_dir"])).records_path
        if path.is_file():
            try:
                out[str(cell["cell"])] = cell_matrix(read_cell_records(path), max_records, max_positions)
            except KeyError as e:
                raise MemlawError(f"{path}: a record lacks the field {e}")
    return out


def analyze(sweep_dir: str | Path, bins: int = DEFAULT_BINS) -> PhaseAnalysis:
    """Read every ok cell's records.jsonl and compute the phase-transition analysis."""
    if bins < 1:
        raise MemlawError(f"--bins must be at least 1, got {bins}")
    sweep_dir = Path(sweep_dir)
    cells = ok_cells(load_results(sweep_dir), sweep_dir)
    rows: list[dict] = []
    profiles: list[tuple[np.ndarray, np.ndarray]] = []  # per record: p_t, stubborn mask
    skipped: list[str] = []
    for cell in cells.to_dict("records"):
        path = RunDir(sweep_dir / str(cell["run_dir"])).records_path
        if not path.is_file():
            skipped.append(f"cell {cell['cell']}: no records.jsonl at {path}")
            continue
        for rec in read_cell_records(path):
            try:
                rows.append(record_row(cell, rec))
                probs = np.asarray(rec["target_probs"], dtype=float)
                mask = np.zeros(len(probs), dtype=bool)
                mask[[int(i) for i in rec.get("stubborn_positions") or []]] = True
            except KeyError as e:
                raise MemlawError(f"{path}: a record lacks the field {e}")
            except (TypeError, ValueError, IndexError) as e:  # a field of the wrong type or out of range
                raise MemlawError(f"{path}: damaged: a record's probabilities or positions are unreadable ({e})") from None
            profiles.append((probs, mask))
    if not rows:
        raise MemlawError(f"no records in {sweep_dir}: {len(cells)} ok cells, none with a non-empty records.jsonl")
    records = records_frame(rows)
    summary = summarize(records, bins)
    summary.update(sweep=str(sweep_dir), cells=len(cells) - len(skipped), skipped_cells=skipped)
    return PhaseAnalysis(summary=summary, records=records, grid=probability_grid(records, profiles, bins))


def records_frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    for col in ("earliest_stubborn", "first_failure"):
        df[col] = df[col].astype("Int64")
    df["ratio"] = none_for_missing(df["ratio"])
    return df


# ---------------------------------------------------------------------- statistics
def spearman(x: Iterable[float], y: Iterable[float]) -> dict:
    """Spearman's ρ with its p-value and n; ρ and p are None when undefined (n < 2 or a constant side)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    n = len(x)
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p": None, "n": n}
    res = spearmanr(x, y)
    return {"rho": finite(res.statistic), "p": finite(res.pvalue), "n": n}


def failure_pairs(records: pd.DataFrame) -> pd.DataFrame:
    """The records that have both an earliest stubborn position and a first free-run failure."""
    return records[records["earliest_stubborn"].notna() & records["first_failure"].notna()]


def spearman_by(records: pd.DataFrame) -> list[dict]:
    """Spearman ρ of earliest stubborn vs first failure within each (benchmark, method)."""
    pairs = failure_pairs(records)
    return [
        {**dict(zip(SPEARMAN_KEYS, key)), **spearman(d["earliest_stubborn"], d["first_failure"])}
        for key, d in split_by(pairs, SPEARMAN_KEYS)
    ]


def certificate_check(records: pd.DataFrame) -> dict:
    """How often the first failure is at or after the earliest stubborn token, and the violations."""
    failed = records[records["first_failure"].notna()]
    pairs = failure_pairs(records)
    at_or_after = int((pairs["first_failure"] >= pairs["earliest_stubborn"]).sum())
    bad = failed[failed["earliest_stubborn"].isna() | (failed["first_failure"] < failed["earliest_stubborn"])]
    return {
        "failures": len(failed),
        "pairs": len(pairs),
        "at_or_after": at_or_after,
        "at_or_after_fraction": at_or_after / len(pairs) if len(pairs) else None,
        "violations": len(bad),
        "violating_records": [
            {k: py_value(r[k]) for k in ("cell", "id", "earliest_stubborn", "first_failure")}
            for r in bad.head(MAX_LISTED_VIOLATIONS).to_dict("records")
        ],
    }


def position_edges(max_position: int, bins: int) -> np.ndarray:
    """Histogram edges for token positions 0..max_position: one bin per position when they fit in `bins`."""
    if max_position + 1 <= bins:
        return np.arange(max_position + 2, dtype=float)
    return np.linspace(0.0, max_position + 1.0, bins + 1)


def failure_histograms(records: pd.DataFrame, bins: int = DEFAULT_BINS) -> dict:
    """Counts and quartiles of first-failure positions, absolute (tokens) and relative (/ target length)."""
    failed = records[records["first_failure"].notna()]
    pos = failed["first_failure"].to_numpy(dtype=float)
    rel = pos / failed["target_len"].to_numpy(dtype=float)
    out = {}
    for name, values, edges in (
        ("absolute", pos, position_edges(int(pos.max()) if len(pos) else 0, bins)),
        ("relative", rel, np.linspace(0.0, 1.0, bins + 1)),
    ):
        counts, _ = np.histogram(values, edges)
        quartiles = np.percentile(values, [25, 50, 75]).tolist() if len(values) else None
        out[name] = {"edges": edges.tolist(), "counts": counts.tolist(), "quartiles": quartiles}
    return out


def bin_profile(values: np.ndarray, bins: int) -> np.ndarray:
    """Mean of a per-token series over `bins` equal slices of relative position [0, 1].

    Token i covers [i/T, (i+1)/T); a token that straddles a slice boundary counts in both slices
    in proportion to its overlap, so every slice is defined even when T < bins.
    """
    values = np.asarray(values, dtype=float)
    total = len(values)
    integral = np.concatenate([[0.0], np.cumsum(values)])
    at_edges = np.interp(np.linspace(0.0, total, bins + 1), np.arange(total + 1), integral)
    return np.diff(at_edges) * bins / total


def probability_grid(records: pd.DataFrame, profiles: list[tuple[np.ndarray, np.ndarray]], bins: int) -> pd.DataFrame:
    """Per (group, length, rank) and relative-position bin: token-weighted mean p_t and stubborn fraction.

    `profiles` is aligned with `records`: each record's p_t array and stubborn mask.
    """
    sums: dict[tuple, list] = {}  # key -> [weighted p sum, weighted stubborn sum, tokens, records]
    for key, (probs, mask) in zip(row_keys(records, CELL_KEYS), profiles):
        if not len(probs):
            continue
        acc = sums.setdefault(key, [np.zeros(bins), np.zeros(bins), 0, 0])
        acc[0] += len(probs) * bin_profile(probs, bins)
        acc[1] += len(probs) * bin_profile(mask, bins)
        acc[2] += len(probs)
        acc[3] += 1
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = [
        {**dict(zip(CELL_KEYS, key)), "bin": b, "rel_start": float(edges[b]), "rel_end": float(edges[b + 1]),
         "mean_p": float(p_sum[b] / tokens), "stubborn_fraction": float(s_sum[b] / tokens), "records": n}
        for key, (p_sum, s_sum, tokens, n) in sorted(sums.items(), key=lambda kv: cell_sort_key(kv[0]))
        for b in range(bins)
    ]
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def cell_summaries(records: pd.DataFrame) -> list[dict]:
    """Per (group, length, rank): counts of records, exact, certified, failures, and the median positions."""
    out = []
    for key, d in split_by(records, CELL_KEYS):
        fail = d["first_failure"].dropna().to_numpy(dtype=float)
        stub = d["earliest_stubborn"].dropna().to_numpy(dtype=float)
        out.append({
            **dict(zip(CELL_KEYS, key)),
            "records": len(d),
            "exact": int(d["exact"].sum()),
            "certified": int(d["certified"].sum()),
            "failures": len(fail),
            "median_first_failure": float(np.median(fail)) if len(fail) else None,
            "median_earliest_stubborn": float(np.median(stub)) if len(stub) else None,
        })
    return out


def summarize(records: pd.DataFrame, bins: int = DEFAULT_BINS) -> dict:
    """The phase.json content (without the sweep's path and skipped cells)."""
    pairs = failure_pairs(records)
    return {
        "records": len(records),
        "exact": int(records["exact"].sum()),
        "certified": int(records["certified"].sum()),
        "spearman": spearman(pairs["earliest_stubborn"], pairs["first_failure"]),
        "spearman_by": spearman_by(records),
        "certificate": certificate_check(records),
        "failure_positions": failure_histograms(records, bins),
        "bins": bins,
        "cells_summary": cell_summaries(records),
    }


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: counts, ρ, the certificate check, failure-position quartiles."""
    s, c = summary["spearman"], summary["certificate"]
    lines = [
        f"{summary['records']} records in {summary['cells']} cells: {summary['exact']} exact, {summary['certified']} certified",
    ]
    lines.append(f"earliest stubborn vs first failure: {format_rho(s)}")
    lines.extend(f"  {entry['benchmark']} · {entry['method']}: {format_rho(entry)}" for entry in summary["spearman_by"])
    if c["failures"]:
        q = summary["failure_positions"]
        a, r = q["absolute"]["quartiles"], q["relative"]["quartiles"]
        lines.append(f"first-failure position quartiles: {a[0]:g} / {a[1]:g} / {a[2]:g} tokens; "
                     f"relative {r[0]:.2f} / {r[1]:.2f} / {r[2]:.2f}")
        lines.append(f"failures at or after the earliest stubborn token: {c['at_or_after']}/{c['pairs']}; "
                     f"certificate violations: {c['violations']}")
    else:
        lines.append("no free-run failures: every record was reproduced exactly")
    return "\n".join(lines)


# ---------------------------------------------------------------------- files
def write_analysis(analysis: PhaseAnalysis, out: str | Path) -> dict[str, Path]:
    """Write phase.json, records.csv and prob_grid.csv (atomically) into `out`."""
    out = Path(out)
    paths = {"phase": out / "phase.json", "records": out / "records.csv", "grid": out / "prob_grid.csv"}
    write_json(paths["phase"], analysis.summary)
    write_csv(paths["records"], csv_rows(analysis.records), list(RECORD_COLUMNS))
    write_csv(paths["grid"], csv_rows(analysis.grid), list(GRID_COLUMNS))
    return paths


SUMMARY_KEYS = ("records", "cells", "exact", "certified", "certificate", "spearman", "failure_positions")


def read_analysis(out: str | Path) -> PhaseAnalysis:
    """The analysis written by write_analysis; a missing or damaged file is one MemlawError naming it."""
    from ..io import read_json_object

    out = Path(out)
    summary = read_json_object(out / "phase.json")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise MemlawError(f"{out / 'phase.json'}: damaged: missing {', '.join(missing)}")
    frames = []
    for name, columns, dtype in (("records.csv", RECORD_COLUMNS, {"id": str}), ("prob_grid.csv", GRID_COLUMNS, {})):
        path = out / name
        try:
            df = pd.read_csv(path, dtype={**dtype, "ratio": object, "model": str, "benchmark": str})
            absent = [c for c in columns if c not in df.columns]
            if absent:
                raise ValueError(f"no column {absent[0]}")
            df["ratio"] = none_for_missing(df["ratio"])
            if name == "records.csv":
                for col in ("earliest_stubborn", "first_failure"):
                    df[col] = df[col].astype("Int64")
        except (OSError, ValueError, TypeError, UnicodeDecodeError, pd.errors.ParserError) as e:
            raise MemlawError(f"{path}: damaged: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        frames.append(df)
    return PhaseAnalysis(summary=summary, records=frames[0], grid=frames[1])


def load_or_analyze(sweep_dir: str | Path) -> PhaseAnalysis:
    """DIR/analysis if it exists and is not older than results.parquet, else a fresh in-memory analysis."""
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / "analysis"
    names = ("phase.json", "records.csv", "prob_grid.csv")
    results = sweep_dir / "results.parquet"
    if results.is_file() and all((out / n).is_file() for n in names):
        if min((out / n).stat().st_mtime for n in names) >= results.stat().st_mtime:
            try:
                return read_analysis(out)
            except MemlawError as e:  # recover: the analysis is recomputed from the cells
                print(f"note: {e}; analysing the cells again", file=sys.stderr)
    return analyze(sweep_dir)
