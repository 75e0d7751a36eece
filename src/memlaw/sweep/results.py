"""Cell folders -> one results table (results.parquet + results.csv), rebuilt atomically.

A cell folder is *finished* when it holds config.yaml and metrics.json (and, for
linear-rule, the held-out evaluation's metrics.json); *failed* when it holds error.json
instead. Anything else is pending and has no row.
"""

from __future__ import annotations

import io
import json
import traceback
from pathlib import Path
from typing import Any

import yaml

from ..errors import MemlawError
from ..io import atomic_write_bytes, atomic_write_text, write_json
from .grid import Cell, Grid, data_paths

ERROR_FILE = "error.json"
CELL_COLUMNS = {
    "cell": "string", "status": "string", "error": "string", "model": "string", "benchmark": "string",
    "ratio": "string", "method": "string", "rank": "Int64", "length": "Int64", "seed": "Int64",
    "data_seed": "Int64", "layer": "string", "component": "string", "lr": "float64", "epochs": "Int64",
    "batch_size": "Int64",
}
METRIC_COLUMNS = {
    "n_records": "Int64", "target_tokens": "Int64", "exact_match": "float64", "token_accuracy": "float64",
    "free_run_token_accuracy": "float64", "initial_loss": "float64", "final_loss": "float64",
    "delta_loss": "float64", "stubborn_tokens": "Int64", "certified_fraction": "float64",
    "certificate_violations": "Int64", "bits_stored": "float64", "trainable_params": "Int64",
    "bits_per_param": "float64", "steps": "Int64", "train_seconds": "float64", "stopped": "string",
    "steps_to_certified": "Int64", "seconds_to_certified": "float64",
}
TAIL_COLUMNS = {"heldout_exact_match": "float64", "run_dir": "string"}
COLUMNS = {**CELL_COLUMNS, **METRIC_COLUMNS, **TAIL_COLUMNS}
TIMING_COLUMNS = ("train_seconds", "seconds_to_certified")


def cell_dir(out: Path, cell: Cell) -> Path:
    return out / "cells" / cell.name


def heldout_metrics_path(out: Path, cell: Cell) -> Path | None:
    """Where evaluate_run writes the held-out metrics of a linear-rule cell."""
    heldout = data_paths(cell, out / "data")[1]
    return None if heldout is None else cell_dir(out, cell) / f"eval-{heldout.stem}" / "metrics.json"


def cell_status(out: Path, cell: Cell) -> str | None:
    """'ok' (finished), 'failed' (error.json) or None (pending)."""
    folder = cell_dir(out, cell)
    heldout = heldout_metrics_path(out, cell)
    if all((folder / f).is_file() for f in ("config.yaml", "metrics.json")) and (heldout is None or heldout.is_file()):
        return "ok"
    return "failed" if (folder / ERROR_FILE).is_file() else None


def write_error(folder: Path, error: BaseException) -> None:
    write_json(folder / ERROR_FILE, {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(error)),
    })


def cell_row(grid: Grid, out: Path, cell: Cell) -> dict[str, Any] | None:
    """The results row of a finished or failed cell (None while pending)."""
    status = cell_status(out, cell)
    if status is None:
        return None
    folder = cell_dir(out, cell)
    cfg = cell.train_config("-")
    layer = cfg.layer
    error = metrics = heldout_em = None
    if status == "ok":
        resolved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        layer = resolved.get("layer", layer)
        metrics = _read_json(folder / "metrics.json")
        heldout = heldout_metrics_path(out, cell)
        heldout_em = None if heldout is None else _read_json(heldout)["exact_match"]
    else:
        e = _read_json(folder / ERROR_FILE)
        error = f"{e.get('type')}: {e.get('message')}"
    row = {
        "cell": cell.name, "status": status, "error": error, "model": grid.model, "benchmark": cell.benchmark,
        "ratio": cell.ratio, "method": cell.method, "rank": cell.rank, "length": cell.length, "seed": cell.seed,
        "data_seed": cell.data_seed, "layer": None if layer is None else ",".join(map(str, layer)),
        "component": cfg.component, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
    }
    row.update({k: (metrics or {}).get(k) for k in METRIC_COLUMNS})
    row.update(heldout_exact_match=heldout_em, run_dir=f"cells/{cell.name}")
    return row


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
