"""Cell folders -> one results table (results.parquet + results.csv), rebuilt atomically.

A cell folder is *finished* when it holds config.yaml and metrics.json (and, for
linear-rule, the held-out evaluation's metrics.json); *failed* when it holds error.json
instead. Anything else is pending and has no row.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..errors import MemlawError
from ..io import atomic_write_bytes, atomic_write_text
from ..rundir import RunDir, RunMetrics
from .grid import Cell, Grid, data_paths

CELL_COLUMNS = {
    "cell": "string", "status": "string", "error": "string", "model": "string", "benchmark": "string",
    "ratio": "string", "method": "string", "rank": "Int64", "length": "Int64", "seed": "Int64",
    "data_seed": "Int64", "layer": "string", "component": "string", "lr": "float64", "epochs": "Int64",
    "batch_size": "Int64",
}
METRIC_COLUMNS = RunMetrics.columns()
TAIL_COLUMNS = {"heldout_exact_match": "float64", "run_dir": "string"}
COLUMNS = {**CELL_COLUMNS, **METRIC_COLUMNS, **TAIL_COLUMNS}
TIMING_COLUMNS = ("train_seconds", "seconds_to_certified")


def cell_dir(out: Path, cell: Cell) -> RunDir:
    return RunDir(out / "cells" / cell.name)


def heldout_dir(out: Path, cell: Cell) -> RunDir | None:
    """Where a linear-rule cell's held-out evaluation goes (None for other benchmarks)."""
    heldout = data_paths(cell, out / "data")[1]
    return None if heldout is None else cell_dir(out, cell).eval_dir(heldout)


def cell_status(out: Path, cell: Cell) -> str | None:
    """'ok' (finished), 'failed' (error.json) or None (pending)."""
    run, heldout = cell_dir(out, cell), heldout_dir(out, cell)
    if run.is_finished() and (heldout is None or heldout.metrics_path.is_file()):
        return "ok"
    return "failed" if run.error_path.is_file() else None


def cell_row(grid: Grid, out: Path, cell: Cell) -> dict[str, Any] | None:
    """The results row of a finished or failed cell (None while pending)."""
    status = cell_status(out, cell)
    if status is None:
        return None
    run = cell_dir(out, cell)
    cfg = cell.train_config("-")
    layer = cfg.layer
    error = metrics = heldout_em = None
    if status == "ok":
        layer = run.read_config().layer
        metrics = run.read_metrics()
        heldout = heldout_dir(out, cell)
        heldout_em = None if heldout is None else heldout.read_metrics().exact_match
    else:
        error = run.read_error()
    row = {
        "cell": cell.name, "status": status, "error": error, "model": grid.model, "benchmark": cell.benchmark,
        "ratio": cell.ratio, "method": cell.method, "rank": cell.rank, "length": cell.length, "seed": cell.seed,
        "data_seed": cell.data_seed, "layer": None if layer is None else ",".join(map(str, layer)),
        "component": cfg.component, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
    }
    row.update({k: None if metrics is None else getattr(metrics, k) for k in METRIC_COLUMNS})
    row.update(heldout_exact_match=heldout_em, run_dir=f"cells/{cell.name}")
    return row


def results_frame(rows: list[dict[str, Any]]):
    """Rows (grid order) -> a DataFrame with the fixed column order and dtypes."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype(COLUMNS)


def write_results(out: Path, rows: list[dict[str, Any]]):
    """Rewrite results.parquet and results.csv atomically; return the DataFrame."""
    frame = results_frame(rows)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(out / "results.parquet", buf.getvalue())
    atomic_write_text(out / "results.csv", frame.to_csv(index=False))
    return frame


def results_path(path: Path) -> Path:
    """The results file: the path itself, or a sweep folder's results.parquet (else results.csv)."""
    if path.is_dir():
        for name in ("results.parquet", "results.csv"):
            if (path / name).is_file():
                return path / name
        raise MemlawError(f"no results.parquet or results.csv in {path}")
    if not path.is_file():
        raise MemlawError(f"results file not found: {path}")
    if path.suffix not in (".parquet", ".csv"):
        raise MemlawError(f"{path}: expected a .parquet or .csv results table")
    return path


def read_results(path: Path):
    """The results table (a .parquet or .csv file) as a DataFrame; MemlawError if it cannot be read."""
    import pandas as pd
    from pyarrow import ArrowException

    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, ArrowException) as e:  # unreadable, truncated, not a table
        raise MemlawError(f"cannot read {path}: {e}") from None
