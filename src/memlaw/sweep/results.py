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


def verify_cell(out: Path, cell: Cell) -> None:
    """Read every file a finished cell's users read (config, metrics, records, adapter); MemlawError naming
    the first that cannot be read. A sweep counts such a cell as unfinished."""
    from ..model.memory_unit import ADAPTER_FILE, read_spec

    run = cell_dir(out, cell)
    run.read_config()
    metrics = run.read_metrics()
    records = run.read_records()
    if len(records) != metrics.n_records:
        raise MemlawError(f"{run.records_path}: damaged: {len(records)} records, metrics.json says {metrics.n_records}")
    spec = read_spec(run.path)
    path = run.path / ADAPTER_FILE
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_tensor(key).shape) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - any failure to read it is damage
        raise MemlawError(f"{path}: damaged: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    for key, shape in shapes.items():  # the shapes adapter.json implies (the full check needs the model: load_adapter)
        want = {".A": (spec.hidden_size, spec.rank), ".B": (spec.rank, spec.hidden_size)}.get(key[-2:]) \
            if spec.component == "mlp" else None
        lora_rank = shape[0] if "lora_A" in key else shape[-1] if "lora_B" in key else spec.rank
        if (want is not None and shape != want) or lora_rank != spec.rank:
            raise MemlawError(f"{path}: damaged: tensor {key} has shape {shape}, which adapter.json does not allow")
    heldout = heldout_dir(out, cell)
    if heldout is not None:
        heldout.read_metrics()


def set_aside(out: Path, cell: Cell) -> Path:
    """Move a damaged cell folder to cells/<name>.damaged-<time>/ (kept for inspection); return where."""
    import time

    src = cell_dir(out, cell).path
    dest = src.with_name(f"{src.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        dest, n = src.with_name(f"{src.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    src.rename(dest)
    return dest


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
    if cell.length is None and metrics is not None:  # the linear rule, sized in pairs: its answer tokens
        row["length"] = metrics.target_tokens
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


def sweep_table(sweep_dir: str | Path):
    """A sweep folder's results table. A missing or damaged results.parquet in a folder that holds grid.yaml
    and cells/ is rebuilt from the cell folders and written back (a note on stderr says so)."""
    import sys

    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "results.parquet"
    if path.is_file():
        try:
            return read_results(path)
        except MemlawError as e:
            problem = str(e)
    else:
        problem = f"no results.parquet in {sweep_dir}"
    if not ((sweep_dir / "grid.yaml").is_file() and (sweep_dir / "cells").is_dir()):
        raise MemlawError(f"{problem} (not a sweep folder, or the sweep has not run)")
    frame = rebuild_results(sweep_dir)
    print(f"note: {problem}; rebuilt the results from {len(frame)} cell folders", file=sys.stderr)
    return frame


def rebuild_results(sweep_dir: Path):
    """results.parquet and results.csv from grid.yaml and the cell folders; unreadable cells are left out."""
    import sys

    from .grid import load_grid

    grid = load_grid(sweep_dir / "grid.yaml")
    rows = []
    for cell in grid.cells():
        try:
            row = cell_row(grid, sweep_dir, cell)
        except MemlawError as e:
            print(f"note: cell {cell.name} left out: {e}", file=sys.stderr)
            continue
        if row is not None:
            rows.append(row)
    return write_results(sweep_dir, rows)


def read_results(path: Path):
    """The results table (a .parquet or .csv file) as a DataFrame; MemlawError if it cannot be read."""
    import pandas as pd
    from pyarrow import ArrowException

    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError, ArrowException) as e:  # unreadable, truncated, not a table
        raise MemlawError(f"cannot read {path}: {e}") from None
