"""Stubborn tokens over training (the paper's Figure 3a), from the cells' token_probs.safetensors.

A run trained with ``--log-token-probs N`` holds the teacher-forced p_t of every answer
token at step 0, every N steps and the last step. Most tokens cross the certificate's
threshold (p_t > 0.5) early; the *stubborn* ones cross last or never, and they decide when
a record is certified. This module reduces a trace to what the figure shows: the fraction
of tokens above the threshold per step, each token's crossing step, and the tokens that
crossed last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import MemlawError
from ..rundir import RunDir, TokenProbTrace


@dataclass(frozen=True)
class Trajectory:
    """One cell's trace: p_t of every answer token (all records concatenated) at each recorded step."""

    steps: np.ndarray  # (checks,)
    probs: np.ndarray  # (checks, tokens)
    threshold: float

    @classmethod
    def from_trace(cls, trace: TokenProbTrace) -> Trajectory:
        return cls(steps=np.asarray(trace.steps), probs=np.asarray(trace.probs, dtype=float), threshold=float(trace.threshold))

    def above_fraction(self) -> np.ndarray:
        """(checks,) the fraction of tokens with p_t above the threshold at each recorded step."""
        return (self.probs > self.threshold).mean(axis=1) if self.probs.shape[1] else np.zeros(len(self.steps))

    def crossing_steps(self) -> np.ndarray:
        """(tokens,) the first recorded step from which p_t stays above the threshold; inf for a token still at or
        below it at the last step (stubborn at the end)."""
        below = self.probs <= self.threshold  # (checks, tokens)
        checks = len(self.steps)
        last_below = np.where(below.any(axis=0), checks - 1 - np.argmax(below[::-1], axis=0), -1)  # (tokens,)
        after = last_below + 1
        steps = np.append(self.steps.astype(float), np.inf)  # after == checks: never crossed for good
        return steps[after]

    def last_to_cross(self, k: int) -> np.ndarray:
        """Indices of the k tokens that crossed last: those never crossing first (lowest final p_t first),
        then by latest crossing step."""
        crossing = self.crossing_steps()
        order = np.lexsort((self.probs[-1], -crossing))  # primary: latest crossing (inf first); then lowest final p_t
        return order[: min(k, len(order))]


def load_trajectories(sweep_dir: str | Path, cells: pd.DataFrame) -> dict[str, Trajectory]:
    """cell name -> its Trajectory, for the ok cells whose run folder has a token_probs file (others left out).

    A present but unreadable file is an error naming it (MemlawError), not a silent gap.
    """
    out = {}
    for cell in cells.to_dict("records"):
        run = RunDir(Path(sweep_dir) / str(cell["run_dir"]))
        if run.token_probs_path.is_file():
            try:
                out[str(cell["cell"])] = Trajectory.from_trace(run.read_token_probs())
            except MemlawError as e:
                raise MemlawError(f"cell {cell['cell']}: {e}") from None
    return out
