"""Stubborn tokens over training (memlaw.analysis.trajectories): crossing steps worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memlaw.analysis.trajectories import Trajectory, load_trajectories
from memlaw.errors import MemlawError
from memlaw.rundir import RunDir

# 4 recorded steps × 4 tokens: token 0 is above 0.5 from the start; token 1 crosses at step 10;
# token 2 crosses at step 10, falls back at 20 and crosses for good at 30; token 3 never crosses.
STEPS = np.array([0, 10, 20, 30])
PROBS = np.array([
    [0.9, 0.1, 0.2, 0.1],
    [0.9, 0.6, 0.7, 0.2],
    [0.9, 0.8, 0.5, 0.3],  # exactly 0.5 is stubborn (the certificate needs p_t > 0.5)
    [0.9, 0.9, 0.8, 0.4],
])


def test_crossing_steps_fractions_and_last_to_cross():
    t = Trajectory(steps=STEPS, probs=PROBS, threshold=0.5)
    np.testing.assert_array_equal(t.crossing_steps(), [0, 10, 30, np.inf])
    np.testing.assert_allclose(t.above_fraction(), [0.25, 0.75, 0.5, 0.75])
    assert list(t.last_to_cross(3)) == [3, 2, 1]  # never, then step 30, then step 10
    assert list(t.last_to_cross(10)) == [3, 2, 1, 0]


def test_load_trajectories_reads_traced_cells_and_names_a_broken_file(tmp_path):
    traced = RunDir(tmp_path / "cells" / "a")
    traced.path.mkdir(parents=True)
    traced.write_token_probs(steps=STEPS, probs=PROBS, lengths=[2, 2], ids=["r0", "r1"], threshold=0.5)
    RunDir(tmp_path / "cells" / "b").path.mkdir(parents=True)  # no trace: left out
    cells = pd.DataFrame({"cell": ["a", "b"], "run_dir": ["cells/a", "cells/b"]})
    traces = load_trajectories(tmp_path, cells)
    assert list(traces) == ["a"]
    np.testing.assert_allclose(traces["a"].probs, PROBS, atol=1e-3)  # stored as float16
    traced.token_probs_path.write_bytes(b"not a safetensors file")
    with pytest.raises(MemlawError, match="cell a: "):
        load_trajectories(tmp_path, cells)
