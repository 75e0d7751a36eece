"""Linear-rule benchmark (generalization check): f(x, y) = 3x + 5y + 7 on disjoint train / held-out pairs."""

from __future__ import annotations

import random

from ..errors import MemlawError


def rule(x: int, y: int) -> int:
    return 3 * x + 5 * y + 7


def linear_rule_query(x: int, y: int) -> str:
    return f"f({x}, {y}) ="


def generate_linear_rule(n_train: int, n_heldout: int, seed: int = 42, max_value: int = 99) -> tuple[list[dict], list[dict]]:
    """Seeded, disjoint sets of records ``{"id", "query": "f(x, y) =", "target": "3x+5y+7"}``."""
    grid = (max_value + 1) ** 2
    if n_train <= 0 or n_heldout <= 0:
        raise MemlawError("linear-rule: --train and --heldout must be positive integers")
    if n_train + n_heldout > grid:
        raise MemlawError(f"linear-rule: only {grid} distinct (x, y) pairs with values 0..{max_value}")
    rng = random.Random(seed)
    cells = rng.sample(range(grid), n_train + n_heldout)
    rows = []
    for i, cell in enumerate(cells):
        x, y = divmod(cell, max_value + 1)
        rows.append({"id": i, "query": linear_rule_query(x, y), "target": str(rule(x, y))})
    return rows[:n_train], rows[n_train:]
