"""Sweeps: grids of training runs (YAML, presets), local and Ray runners, a results table."""

from .grid import Cell, Grid, list_presets, load_grid, load_preset, parse_grid
from .results import COLUMNS, TIMING_COLUMNS
from .runner import run_cell, run_sweep

__all__ = [
    "COLUMNS", "Cell", "Grid", "TIMING_COLUMNS", "list_presets", "load_grid", "load_preset", "parse_grid",
    "run_cell", "run_sweep",
]
