"""Which cells of a sweep train together: packs of cells that share model, data, layers and batch size.

A pack trains in one pass (memlaw.train.trainer.train_pack): every step runs the j-th micro-batch of each
of its cells in one forward, so the fixed cost of a step (kernel launches on a GPU, per-step overhead on a
CPU) is paid once for all of them, and the prefix cache is built once. Each cell's rows are what it gives
alone (tests/test_packs.py). The bound: a pack's micro-batch holds at most PACK_ROWS records, so its
activations stay those of one batch of that many records.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrainConfig, pack_key
from ..errors import MemlawError
from .grid import Cell, data_paths

PACK_MODES = ("auto", "on", "off")
PACK_ROWS = 64  # records in a pack's micro-batch at most: K cells of batch size B pack while K * B <= this


def why_alone(cfg: TrainConfig) -> str | None:
    """Why a cell with this config cannot join a pack (None: it can)."""
    if cfg.component != "mlp":
        return "lora units train alone"
    if pack_key(cfg) is None:
        return "a run with locality means (--preserve-*) trains alone"
    return None


def packs(cells: list[Cell], data_dir: Path, mode: str = "auto", rows: int = PACK_ROWS) -> list[list[Cell]]:
    """`cells` grouped into packs, in the order of each pack's first cell. off: one cell per pack. auto: cells
    of one pack_key together, up to `rows` records per micro-batch; a cell that cannot pack runs alone. on:
    the same, but a cell that cannot pack is a MemlawError naming it, before anything runs."""
    if mode not in PACK_MODES:
        raise MemlawError(f"--pack: must be one of {', '.join(PACK_MODES)}, got {mode!r}")
    if mode == "off":
        return [[cell] for cell in cells]
    out: list[list[Cell]] = []
    open_packs: dict[tuple, list[Cell]] = {}
    for cell in cells:
        cfg = cell.train_config(data_paths(cell, data_dir)[0])
        reason = why_alone(cfg)
        if reason is not None:
            if mode == "on":
                raise MemlawError(f"--pack on: cell {cell.name} cannot pack ({reason}); use --pack auto")
            out.append([cell])
            continue
        key = pack_key(cfg)
        pack = open_packs.get(key)
        if pack is None or (len(pack) + 1) * cfg.batch_size > max(rows, cfg.batch_size):
            pack = open_packs[key] = []
            out.append(pack)
        pack.append(cell)
    return out


def spread(packs_: list[list[Cell]], workers: int) -> list[list[Cell]]:
    """Split the largest packs in halves until there are at least `workers` packs (or every pack is one cell):
    on Ray, packing must not leave workers idle that could run cells of their own."""
    out = [list(p) for p in packs_]
    while len(out) < workers:
        largest = max(range(len(out)), key=lambda i: len(out[i]), default=None)
        if largest is None or len(out[largest]) < 2:
            break
        pack = out.pop(largest)
        half = (len(pack) + 1) // 2
        out[largest:largest] = [pack[:half], pack[half:]]
    return out
