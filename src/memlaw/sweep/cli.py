"""`memlaw sweep`: run a grid of training runs (local or Ray), resumable, results in parquet/CSV."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from .packs import PACK_MODES, PACK_ROWS
    from .runner import MAX_RETRIES

    p = subparsers.add_parser(
        "sweep",
        help="run a grid of training runs (local or Ray); resumable; results in DIR/results.parquet",
        description="Every cell is a run folder DIR/cells/<name>; finished cells are skipped on a rerun. "
        "Exit 1 if any cell failed (see DIR/cells/<name>/error.json).",
    )
    p.add_argument("grid", nargs="?", default=None, metavar="GRID.yaml", help="grid file (or use --preset)")
    p.add_argument("--out", default=None, metavar="DIR", help="sweep folder: grid.yaml, data/, cells/, results")
    p.add_argument("--preset", default=None, metavar="NAME", help="a shipped grid (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the shipped grids and exit")
    p.add_argument("--engine", choices=("local", "ray"), default="local", help="local (default): one cell after another in this process; ray: a pool of Ray workers, one cell each at a time")
    p.add_argument("--address", default=None, metavar="ADDR", help="ray: connect to this cluster instead of starting a local instance")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="ray: at most N cells at a time (default: CPUs, or GPUs when training on CUDA)")
    p.add_argument("--max-retries", type=int, default=MAX_RETRIES, metavar="N",
                   help=f"ray: run a cell whose worker died again at most N times, then record it as failed (default: {MAX_RETRIES})")
    p.add_argument("--gpus-per-cell", type=float, default=1.0, metavar="F",
                   help="ray, CUDA grids: the share of a GPU each worker takes (0.25: four small cells at once per GPU; default 1)")
    p.add_argument("--pack", choices=PACK_MODES, default="auto",
                   help="train cells that share model, data, layers and batch size together, in one pass (the same rows up "
                        f"to float rounding; docs/sweeps.md): auto (default) packs the cells that can, up to {PACK_ROWS} "
                        "records a micro-batch; on: every cell must; off: one cell at a time")
    p.add_argument("--model", default=None, metavar="PATH", help="model for every cell (replaces the grid's; required by the 8B presets)")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again (default: keep them as failed)")
    p.add_argument("--overwrite", action="store_true", help="DIR holds a different grid: delete its cells and results, start over")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import MemlawError
    from .grid import list_presets, load_grid, load_preset

    if args.list_presets:
        presets = list_presets()
        width = max(map(len, presets))
        for name, description in presets.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if (args.grid is None) == (args.preset is None):
        raise MemlawError("sweep: give a GRID.yaml or --preset NAME (one of them)")
    if args.out is None:
        raise MemlawError("sweep: --out DIR is required")
    grid = load_preset(args.preset, args.model) if args.preset else load_grid(args.grid, args.model)

    from .runner import run_sweep, summary_lines

    frame = run_sweep(
        grid, args.out, engine=args.engine, address=args.address, workers=args.workers,
        retry_failed=args.retry_failed, overwrite=args.overwrite, max_retries=args.max_retries, gpus_per_cell=args.gpus_per_cell,
        pack=args.pack,
    )
    for line in summary_lines(frame, Path(args.out)):
        print(line, file=sys.stderr if line.startswith("failed") else sys.stdout)
    return 1 if (frame["status"] == "failed").any() else 0
