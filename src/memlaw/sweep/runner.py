"""Run a grid: every cell is a run folder DIR/cells/<name>; finished cells are skipped.

Engines: ``local`` runs cells one after another in this process; ``ray`` runs them on a pool of
Ray actors (one per GPU when the grid trains on CUDA, else one per CPU) on a local Ray instance or
an existing cluster. In both, a worker (memlaw.sweep.worker) keeps its base model loaded across
cells, trains each cell in a scratch folder of its own and hands the files back; only this process
(the driver) writes DIR, holding DIR's lock (memlaw.lock) for the whole sweep. A Ray worker that
dies mid-cell is replaced and the cell retried, at most `max_retries` times. Both engines rebuild
DIR/results.parquet and DIR/results.csv after every finished cell, so the tables are the same
whichever engine ran.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable

import yaml
from tqdm.auto import tqdm

from ..errors import MemlawError
from ..io import write_yaml
from ..lock import FolderLock
from ..rundir import ERROR_FILE
from .grid import Cell, Grid
from .packs import PACK_MODES, packs, spread
from .results import cell_row, set_aside, verify_cell, write_results
from .worker import SCRATCH, CellOutcome, CellWorker, clean_leftovers, data_payload, publish_cell

ENGINES = ("local", "ray")
RAY_HINT = "the ray engine needs Ray: pip install 'memlaw[ray]'"
MAX_RETRIES = 2  # ray: times a cell whose worker died is run again before it counts as failed


def run_cell(grid: Grid, cell: Cell, out: str | Path, worker: CellWorker | None = None) -> str:
    """Train one cell from scratch into DIR/cells/<name> (a linear-rule cell is also evaluated on its
    held-out pairs); returns "ok" or "failed" (the exception is in the cell's error.json)."""
    out = Path(out)
    with FolderLock(out):
        worker = worker or CellWorker(scratch_root=out / SCRATCH)
        outcome = worker.run(grid, cell, data_payload(grid, cell, out / "data"), str(out / "data"))
        publish_cell(out, outcome)
    return outcome.status


def prepare_sweep_dir(grid: Grid, out: Path, overwrite: bool) -> None:
    """Write DIR/grid.yaml; refuse a DIR that holds a different grid unless `overwrite` (then start over)."""
    path = out / "grid.yaml"
    current = yaml.safe_load(yaml.safe_dump(grid.to_dict(), sort_keys=False))
    if path.is_file():
        try:
            previous = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            if not overwrite:
                raise MemlawError(f"{path} is damaged ({str(e).splitlines()[0]}): it says which grid DIR holds; restore "
                                  "it (or delete it, if this is the same grid), or pass --overwrite to start over") from None
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
    max_retries: int = MAX_RETRIES,
    reuse_model: bool = True,
    gpus_per_cell: float = 1.0,
    pack: str = "auto",
):
    """Run every unfinished cell of `grid` into `out_dir`; return the results DataFrame.

    Finished cells are skipped; failed ones too unless `retry_failed`. The frame's
    ``attrs["skipped"]`` counts the cells not run in this call. `reuse_model=False` loads the
    base model for every cell (for the throughput benchmark; the rows are the same).
    `gpus_per_cell` (ray, CUDA grids): the share of a GPU each worker asks for; 0.25 runs four
    small cells at once on each GPU. `pack` (auto | on | off): train cells that share model, data, layers and
    batch size together in one pass (memlaw.sweep.packs); each cell's folder and row are what it gives alone.
    """
    if engine not in ENGINES:
        raise MemlawError(f"--engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "local" and (address is not None or workers is not None):
        raise MemlawError("--address and --workers apply to --engine ray")
    if workers is not None and workers <= 0:
        raise MemlawError(f"--workers: must be a positive integer, got {workers!r}")
    if max_retries < 0:
        raise MemlawError(f"--max-retries: must be >= 0, got {max_retries!r}")
    if pack not in PACK_MODES:
        raise MemlawError(f"--pack: must be one of {', '.join(PACK_MODES)}, got {pack!r}")
    if not 0 < gpus_per_cell <= 1 and not (gpus_per_cell > 1 and float(gpus_per_cell).is_integer()):
        raise MemlawError(f"--gpus-per-cell: must be in (0, 1] or a whole number, got {gpus_per_cell!r}")
    out = Path(out_dir).expanduser().resolve()
    with FolderLock(out):
        return _sweep(grid, out, engine, address, workers, retry_failed, overwrite, progress, max_retries, reuse_model,
                      gpus_per_cell, pack)


def _sweep(grid: Grid, out: Path, engine: str, address: str | None, workers: int | None, retry_failed: bool,
           overwrite: bool, progress: bool, max_retries: int, reuse_model: bool, gpus_per_cell: float, pack: str):
    prepare_sweep_dir(grid, out, overwrite)
    clean_leftovers(out)
    cells = grid.cells()
    rows = {c.name: readable_row(grid, out, c) for c in cells}
    failed_before = [c for c in cells if rows[c.name] is not None and rows[c.name]["status"] == "failed"]
    todo = [c for c in cells if rows[c.name] is None or (retry_failed and c in failed_before)]
    todo_packs = packs(todo, out / "data", pack)
    skipped = len(cells) - len(todo)
    write_results(out, [r for r in rows.values() if r is not None])
    if progress:
        kept = "" if retry_failed or not failed_before else f" ({len(failed_before)} of them failed; --retry-failed re-runs them)"
        packed = f" in {len(todo_packs)} packs" if len(todo_packs) < len(todo) else ""
        print(f"sweep {grid.name}: {len(cells)} cells, {skipped} done before and skipped{kept}, {len(todo)} to run{packed}",
              flush=True)

    bar = tqdm(total=len(cells), initial=skipped, unit="cell", desc=grid.name, disable=not progress, dynamic_ncols=True)

    def finished(outcome: CellOutcome) -> None:
        """Publish a cell's files (once: the driver is its only writer) and rebuild the tables."""
        publish_cell(out, outcome)
        cell = by_name[outcome.name]
        rows[cell.name] = cell_row(grid, out, cell)
        write_results(out, [r for r in rows.values() if r is not None])
        bar.update(1)

    def status(running: str) -> None:
        failed = sum(r is not None and r["status"] == "failed" for r in rows.values())
        bar.set_postfix_str(f"{running}, failed: {failed}")

    by_name = {c.name: c for c in cells}
    try:
        if todo:
            if engine == "ray":
                _run_ray(grid, out, todo_packs, finished, status, address, workers, max_retries, reuse_model, gpus_per_cell,
                         spread_packs=pack == "auto")
            else:
                _run_local(grid, out, todo_packs, finished, status, reuse_model)
    finally:
        bar.close()
        shutil.rmtree(out / SCRATCH, ignore_errors=True)
    frame = write_results(out, [r for r in rows.values() if r is not None])
    frame.attrs["skipped"] = skipped
    return frame


def readable_row(grid: Grid, out: Path, cell: Cell) -> dict | None:
    """The cell's row; a cell whose files cannot be read is moved aside (kept for inspection), said so in
    one line, and counts as unfinished (None), so this sweep runs it again."""
    try:
        row = cell_row(grid, out, cell)
        if row is not None and row["status"] == "ok":
            verify_cell(out, cell)
        return row
    except MemlawError as e:
        moved = set_aside(out, cell)
        print(f"cell {cell.name} is damaged ({e}); moved to {moved.relative_to(out)}, running it again",
              file=sys.stderr, flush=True)
        return None


def _run_local(grid: Grid, out: Path, todo: list[list[Cell]], finished: Callable[[CellOutcome], None], status,
               reuse_model: bool) -> None:
    worker = CellWorker(scratch_root=out / SCRATCH, reuse_model=reuse_model)
    for pack in todo:
        status(f"running {pack_name(pack)}")
        for outcome in worker.run_pack(grid, pack, pack_payload(grid, pack, out / "data"), str(out / "data")):
            finished(outcome)


def pack_name(pack: list[Cell]) -> str:
    return pack[0].name if len(pack) == 1 else f"{pack[0].name} and {len(pack) - 1} packed with it"


def pack_payload(grid: Grid, pack: list[Cell], data_dir: Path) -> dict[str, bytes]:
    """The data files of a pack's cells that the driver already has."""
    return {name: content for cell in pack for name, content in data_payload(grid, cell, data_dir).items()}


def _run_ray(
    grid: Grid,
    out: Path,
    todo: list[list[Cell]],
    finished: Callable[[CellOutcome], None],
    status,
    address: str | None,
    workers: int | None,
    max_retries: int,
    reuse_model: bool,
    gpus_per_cell: float,
    spread_packs: bool = False,
) -> None:
    """A pool of model-resident actors, one pack of cells each at a time; a pack whose actor died goes to a new actor."""
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
    inflight: dict[Any, tuple[Any, list[Cell], int]] = {}  # result ref -> (actor, pack, attempt)
    actors: list[Any] = []
    try:
        gpu = grid.device == "cuda" or (grid.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
        resources = ray.cluster_resources()
        if gpu:
            worker_cls = ray.remote(CellWorker).options(num_gpus=gpus_per_cell, num_cpus=0)
            slots = int(resources.get("GPU", 1) / gpus_per_cell)
        else:
            worker_cls = ray.remote(CellWorker).options(num_cpus=1)
            slots = int(resources.get("CPU", 1))
        if spread_packs:  # --pack auto: no idle worker while a pack could be split for it
            todo = spread(todo, workers or max(1, slots))
        size = min(len(todo), workers or max(1, slots))  # todo: the packs

        def new_actor():
            actor = worker_cls.remote(reuse_model=reuse_model)  # scratch: the node's own temporary folder
            actors.append(actor)
            return actor

        idle = [new_actor() for _ in range(size)]
        pending = deque((pack, 1) for pack in todo)
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError)
        data_dir = str(out / "data")
        while pending or inflight:
            while pending and idle:
                pack, attempt = pending.popleft()
                actor = idle.pop()
                ref = actor.run_pack.remote(grid, pack, pack_payload(grid, pack, out / "data"), data_dir)
                inflight[ref] = (actor, pack, attempt)
            status(f"{len(inflight)} in flight")
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            actor, pack, attempt = inflight.pop(ref)
            try:
                outcomes = ray.get(ref)
                idle.append(actor)
            except lost as e:  # the worker process or its node died: replace it, run the cells again
                ray.kill(actor, no_restart=True)
                idle.append(new_actor())
                if attempt <= max_retries:  # a pack's cells one at a time: a cell that kills its worker fails alone
                    pending.extend(([cell], attempt + 1) for cell in pack)
                    continue
                last = " ".join(str(e).split())[:300]
                outcomes = [CellOutcome.failure(cell, f"the worker died {attempt} time(s) running this cell; last: {last}")
                            for cell in pack]
            except ray.exceptions.RayError as e:  # anything else the worker could not catch: failed, not retried
                idle.append(actor)
                outcomes = [CellOutcome.failure(cell, f"Ray could not run this cell: {' '.join(str(e).split())[:300]}")
                            for cell in pack]
            for outcome in outcomes:
                finished(outcome)
    finally:  # killing the actors ends the cells still in flight (Ray cannot force-cancel actor tasks)
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
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
