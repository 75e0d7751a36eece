"""Run a grid: every cell is a run folder DIR/cells/<name>; finished cells are skipped.

Engines: ``local`` runs cells one after another in this process; ``ray`` runs each cell as
a Ray task (one GPU per task when the grid trains on CUDA, else one CPU) on a local Ray
instance or an existing cluster. Both rebuild DIR/results.parquet and DIR/results.csv from
the cell folders after every finished cell, so the tables are the same whichever engine ran.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

from ..errors import MemlawError, TrainingInterrupted
from ..io import write_yaml
from ..rundir import ERROR_FILE
from .grid import Cell, Grid, ensure_data
from .results import cell_dir, cell_row, heldout_dir, write_results

ENGINES = ("local", "ray")
RAY_HINT = "the ray engine needs Ray: pip install 'memlaw[ray]'"


def run_cell(grid: Grid, cell: Cell, out: str | Path) -> str:
    """Train one cell from scratch (a linear-rule cell is also evaluated on its held-out pairs).

    Any exception is recorded in the cell's error.json; returns "ok" or "failed".
    """
    from ..train.trainer import train

    out = Path(out)
    run = cell_dir(out, cell)
    run.path.mkdir(parents=True, exist_ok=True)
    run.error_path.unlink(missing_ok=True)
    heldout_run = heldout_dir(out, cell)
    if heldout_run is not None:
        heldout_run.metrics_path.unlink(missing_ok=True)
    try:
        data, heldout = ensure_data(grid, cell, out / "data")
        train(cell.train_config(data), run.path, overwrite=True, progress=False,
              also_evaluate=() if heldout is None else (heldout,))
    except TrainingInterrupted:
        raise
    except Exception as e:  # noqa: BLE001 - a failing cell must not stop the sweep
        run.write_error(e)
        return "failed"
    return "ok"


def prepare_sweep_dir(grid: Grid, out: Path, overwrite: bool) -> None:
    """Write DIR/grid.yaml; refuse a DIR that holds a different grid unless `overwrite` (then start over)."""
    path = out / "grid.yaml"
    current = yaml.safe_load(yaml.safe_dump(grid.to_dict(), sort_keys=False))
    if path.is_file():
        try:
            previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            previous = None
        if previous == current:
            return
        if not overwrite:
            raise MemlawError(f"--out {out} holds a different sweep (its grid.yaml differs); choose another folder or pass --overwrite")
        for name in ("cells", "data"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("results.parquet", "results.csv"):
            (out / name).unlink(missing_ok=True)
    elif out.exists() and not out.is_dir():
        raise MemlawError(f"--out {out} exists and is not a directory")
    write_yaml(path, current)


def run_sweep(
    grid: Grid,
    out_dir: str | Path,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    retry_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
):
    """Run every unfinished cell of `grid` into `out_dir`; return the results DataFrame.

    Finished cells are skipped; failed ones too unless `retry_failed`. The frame's
    ``attrs["skipped"]`` counts the cells not run in this call.
    """
    if engine not in ENGINES:
        raise MemlawError(f"--engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address is not None or workers is not None):
        raise MemlawError("--address and --workers apply to --engine ray")
    if workers is not None and workers <= 0:
        raise MemlawError(f"--workers: must be a positive integer, got {workers!r}")
    out = Path(out_dir).expanduser().resolve()
    prepare_sweep_dir(grid, out, overwrite)
    cells = grid.cells()
    rows = {c.name: cell_row(grid, out, c) for c in cells}
    failed_before = [c for c in cells if rows[c.name] is not None and rows[c.name]["status"] == "failed"]
    todo = [c for c in cells if rows[c.name] is None or (retry_failed and c in failed_before)]
    skipped = len(cells) - len(todo)
    write_results(out, [r for r in rows.values() if r is not None])
    if progress:
        kept = "" if retry_failed or not failed_before else f" ({len(failed_before)} of them failed; --retry-failed re-runs them)"
        print(f"sweep {grid.name}: {len(cells)} cells, {skipped} done before and skipped{kept}, {len(todo)} to run", flush=True)

    bar = tqdm(total=len(cells), initial=skipped, unit="cell", desc=grid.name, disable=not progress, dynamic_ncols=True)

    def finished(cell: Cell) -> None:
        rows[cell.name] = cell_row(grid, out, cell)
        write_results(out, [r for r in rows.values() if r is not None])
        bar.update(1)

    def status(running: str) -> None:
        failed = sum(r is not None and r["status"] == "failed" for r in rows.values())
        bar.set_postfix_str(f"{running}, failed: {failed}")

    try:
        if todo:
            runner = _run_ray if engine == "ray" else _run_local
            runner(grid, out, todo, finished, status, address=address, workers=workers)
    finally:
        bar.close()
    frame = write_results(out, [r for r in rows.values() if r is not None])
    frame.attrs["skipped"] = skipped
    return frame


def _run_local(grid: Grid, out: Path, todo: list[Cell], finished: Callable[[Cell], None], status, **_: Any) -> None:
    for cell in todo:
        status(f"running {cell.name}")
        run_cell(grid, cell, out)
        finished(cell)


def _run_ray(
    grid: Grid,
    out: Path,
    todo: list[Cell],
    finished: Callable[[Cell], None],
    status,
    address: str | None,
    workers: int | None,
) -> None:
    """One Ray task per cell; at most `workers` in flight; results rewritten as each task ends."""
    try:
        import ray
    except ImportError:
        raise MemlawError(RAY_HINT)
    started = not ray.is_initialized()
    if started:
        if address is not None:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    inflight: dict[Any, Cell] = {}
    try:
        gpu = grid.device == "cuda" or (grid.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        task = ray.remote(run_cell).options(**({"num_gpus": 1} if gpu else {"num_cpus": 1}))
        pending = list(todo)
        limit = workers or len(todo)
        while pending or inflight:
            while pending and len(inflight) < limit:
                cell = pending.pop(0)
                inflight[task.remote(grid, cell, str(out))] = cell
            status(f"{len(inflight)} in flight")
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                cell = inflight.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker died (crash, out of memory, cancelled)
                    cell_dir(out, cell).write_error(e)
                finished(cell)
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def summary_lines(frame, out: Path) -> list[str]:
    """What `memlaw sweep` prints at the end."""
    ok = int((frame["status"] == "ok").sum())
    failed = frame.loc[frame["status"] == "failed", "cell"].tolist()
    lines = [
        f"cells: {ok} ok, {len(failed)} failed, {frame.attrs.get('skipped', 0)} skipped (done in an earlier run)",
        f"results: {out / 'results.parquet'}, {out / 'results.csv'}",
    ]
    if failed:
        lines.append(f"failed cells (see cells/<name>/{ERROR_FILE}): {', '.join(failed)}")
    return lines
