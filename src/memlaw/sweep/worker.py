"""Cells that travel: a worker runs a cell anywhere and hands back its files; only the driver writes DIR.

On a cluster the nodes share no filesystem, so a worker (the local engine's one, or a Ray actor
per GPU or CPU slot) never touches the sweep folder: it generates the cell's data (deterministic
from the grid and seed) unless the driver sent it, trains in a scratch folder of its own, and
returns every file of the cell folder and of the data as bytes (:class:`CellOutcome`). The driver
writes the data once and the cell folder atomically (:func:`publish_cell`): a reader sees the
previous folder or the complete new one, never half of it.

A worker keeps its base model loaded across cells: loading an 8B model costs tens of seconds and
16 GB of reads, training a small cell less. Each cell attaches a fresh seeded unit and detaches
it at the end (memlaw.session), which leaves the base model as loaded, so a cell gives the same
metrics on a reused model as on a fresh one.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrainingInterrupted
from ..io import atomic_write_bytes, replace_folder
from ..lock import LOCK_FILE
from ..rundir import RunDir
from .grid import Cell, Grid, data_paths, ensure_data

SCRATCH = ".scratch"  # DIR/.scratch: the local engine's worker trains here (same disk; cleaned on the next start)
INCOMING, OUTGOING = ".incoming-", ".replaced-"  # cells/.<name><suffix><id>: a cell folder being published (io.replace_folder)


@dataclass
class CellOutcome:
    """What a worker hands back: the cell folder's files and the data files, relative path -> bytes."""

    name: str
    status: str  # "ok" | "failed"
    files: dict[str, bytes]
    data: dict[str, bytes] = field(default_factory=dict)  # data file name -> bytes
    host: str = ""

    @classmethod
    def failure(cls, cell: Cell, reason: str) -> CellOutcome:
        """A cell that no worker could finish (its worker died, or Ray failed it): failed, `reason` in error.json."""
        scratch = Path(tempfile.mkdtemp(prefix="memlaw-failure-"))
        try:
            RunDir(scratch).write_error(RuntimeError(reason))
            return cls(cell.name, "failed", read_folder(scratch))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but a lock file), relative POSIX path -> bytes, in path order."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


class CellWorker:
    """Runs cells one after another with a resident base model (see the module docstring).

    `scratch_root`: where cells are trained (None: the system's temporary folder, node-local on a
    cluster); `reuse_model=False` loads the model again for every cell (the old behaviour, for
    the throughput benchmark).
    """

    def __init__(self, scratch_root: str | os.PathLike | None = None, reuse_model: bool = True):
        self.scratch_root = None if scratch_root is None else Path(scratch_root)
        self.reuse_model = reuse_model
        self._key: tuple | None = None
        self._loaded = None
        self.models_loaded = 0  # how many times this worker loaded a base model

    def loaded_model(self, cfg):
        """The base model for `cfg` (loaded once per model, device, dtype; one model held at a time)."""
        from ..model.loading import load_model

        key = (cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
        if not self.reuse_model or key != self._key:
            self._loaded, self._key = None, None  # release the old model before loading the next
            self._loaded = load_model(cfg.model, cfg.device, cfg.dtype, cfg.trust_remote_code)
            self._key = key
            self.models_loaded += 1
        return self._loaded

    def run(self, grid: Grid, cell: Cell, data: dict[str, bytes], data_dir: str) -> CellOutcome:
        """Train `cell` (evaluating a linear-rule cell on its held-out pairs too) and return its files.

        `data`: data files the driver already has (name -> bytes); the rest are generated here.
        `data_dir`: the driver's data folder, which the returned config.yaml names as the data's home.
        Any exception of the cell is recorded in its error.json (status "failed").
        """
        return self.run_pack(grid, [cell], data, data_dir)[0]

    def run_pack(self, grid: Grid, cells: list[Cell], data: dict[str, bytes], data_dir: str) -> list[CellOutcome]:
        """Train `cells`, which share their data (:func:`memlaw.sweep.packs.packs`), in one pass
        (memlaw.train.trainer.train_pack); one cell alone trains as :meth:`run` always has. Each cell fails alone:
        its exception in its own error.json, the others' outcomes as if they had run alone."""
        from ..train.trainer import train, train_pack

        if self.scratch_root is not None:
            self.scratch_root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"{cells[0].name}-", dir=self.scratch_root))
        try:
            local_data = scratch / "data"
            local_data.mkdir()
            for name, content in data.items():
                (local_data / name).write_bytes(content)
            runs = [RunDir(scratch / cell.name) for cell in cells]
            errors: list[Exception | None] = [None] * len(cells)
            configs = []
            for k, cell in enumerate(cells):
                try:
                    train_file, heldout = ensure_data(grid, cell, local_data)
                    configs.append((k, cell.train_config(train_file), () if heldout is None else (heldout,)))
                except Exception as e:  # noqa: BLE001 - a failing cell must not stop the sweep
                    errors[k] = e
            if len(configs) == 1:  # a cell alone trains as it always has
                (k, cfg, also), = configs
                try:
                    train(cfg, runs[k].path, overwrite=True, progress=False, also_evaluate=also, loaded=self.loaded_model(cfg))
                except TrainingInterrupted:
                    raise
                except Exception as e:  # noqa: BLE001
                    errors[k] = e
            elif configs:
                results = train_pack([cfg for _, cfg, _ in configs], [runs[k].path for k, _, _ in configs],
                                     self.loaded_model(configs[0][1]), [also for _, _, also in configs], overwrite=True)
                for (k, _, _), result in zip(configs, results):
                    if isinstance(result, Exception):
                        errors[k] = result
            outcomes = []
            made = {p.name: p.read_bytes() for p in local_data.iterdir() if p.name not in data}
            for i, (cell, run, error) in enumerate(zip(cells, runs, errors)):
                if error is None:
                    # The scratch copy of the data goes away; the cell names the driver's copy, as if it had run there.
                    run.set_data(Path(data_dir) / data_paths(cell, local_data)[0].name)
                else:
                    run.path.mkdir(parents=True, exist_ok=True)
                    run.write_error(error)
                outcomes.append(CellOutcome(cell.name, "failed" if error else "ok", read_folder(run.path),
                                            made if i == 0 else {}, socket.gethostname()))
            return outcomes
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def data_payload(grid: Grid, cell: Cell, data_dir: Path) -> dict[str, bytes]:
    """The cell's data files the driver already has (empty: the worker generates them)."""
    return {p.name: p.read_bytes() for p in data_paths(cell, data_dir) if p is not None and p.is_file()}


def publish_cell(out: Path, outcome: CellOutcome) -> None:
    """Write a worker's outcome into the sweep folder: new data files, then the cell folder, atomically.

    The new folder is written beside the old one and renamed into place; a crash in between leaves
    either the old folder or no folder (a pending cell, run again on resume) and a hidden
    leftover that :func:`clean_leftovers` removes.
    """
    for name, content in outcome.data.items():
        if not (out / "data" / name).is_file():
            atomic_write_bytes(out / "data" / name, content)
    cells = out / "cells"
    incoming = cells / f".{outcome.name}{INCOMING}{uuid.uuid4().hex[:8]}"
    for rel, content in outcome.files.items():
        path = incoming / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    incoming.mkdir(parents=True, exist_ok=True)
    replace_folder(incoming, cells / outcome.name)


def clean_leftovers(out: Path) -> None:
    """Remove what an interrupted sweep left behind: the local worker's scratch and half-published folders."""
    shutil.rmtree(out / SCRATCH, ignore_errors=True)
    cells = out / "cells"
    if cells.is_dir():
        for p in cells.iterdir():
            if p.name.startswith(".") and (INCOMING in p.name or OUTGOING in p.name):
                shutil.rmtree(p, ignore_errors=True)
