"""Packed cells (memlaw.train.trainer.train_pack, memlaw.sweep.packs): a sweep that trains the cells sharing their
data in one pass gives each cell the row it gets alone, and a cell that fails in a pack fails alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from memlaw.errors import MemlawError
from memlaw.rundir import RunDir
from memlaw.sweep import TIMING_COLUMNS, parse_grid, run_sweep
from memlaw.sweep.packs import packs, spread


def grid_values(model_dir, **changes) -> dict:
    values = {
        "name": "packs", "model": str(model_dir), "benchmark": "phonebook", "methods": ["sft", "memft_ot", "memft_sw"],
        "ranks": [1, 2, 4, 8], "lengths": [60], "seeds": [42], "layer": 1,
        "train": {"lr": 0.05, "epochs": 6, "batch_size": 4, "dropout": 0.0, "device": "cpu", "stop_when": "certified",
                  "log_token_probs": 2},
    }
    values.update(changes)
    if "memft_sw" in values["methods"]:
        values.setdefault("by_method", {"memft_sw": {"epochs": 3}})  # fewer steps: these cells leave the pack first
    return values


def rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=list(TIMING_COLUMNS) + ["run_dir"]).reset_index(drop=True)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_packed_sweep_gives_the_rows_of_one_cell_at_a_time(tiny_model_dir, tmp_path, dropout):
    values = grid_values(tiny_model_dir)
    values["train"]["dropout"] = dropout
    grid = parse_grid(values, "grid.yaml")
    assert [len(p) for p in packs(grid.cells(), tmp_path / "data", "on")] == [12]  # one data file: one pack
    alone = run_sweep(grid, tmp_path / "off", pack="off", progress=False)
    packed = run_sweep(grid, tmp_path / "on", pack="on", progress=False)
    assert packed["status"].eq("ok").all() and len(packed) == 12
    assert alone["steps"].nunique() > 1  # cells leave the pack at different steps
    # The pack pads each cell's rows to the widest cell's; the masked keys may change float sums in the last bits.
    pd.testing.assert_frame_equal(rows(packed), rows(alone), check_exact=False, rtol=1e-5, atol=1e-6)
    for name in packed["cell"]:
        logs = [pd.read_csv(tmp_path / mode / "cells" / name / "train_log.csv") for mode in ("off", "on")]
        pd.testing.assert_frame_equal(logs[1], logs[0], check_exact=False, rtol=1e-5, atol=1e-6)
        traces = [RunDir(tmp_path / mode / "cells" / name).read_token_probs() for mode in ("off", "on")]
        assert traces[1].steps.tolist() == traces[0].steps.tolist()
        np.testing.assert_allclose(traces[1].probs, traces[0].probs, rtol=1e-4, atol=1e-6)


def test_a_diverging_cell_fails_alone_in_its_pack(tiny_model_dir, tmp_path, monkeypatch):
    """sft's token weights turn NaN at its 3rd step (on the tiny model no learning rate overflows float32: the
    final norm absorbs any scale), so its loss is not finite: the sft cells fail with that, the memft_ot cells
    in the same pack finish as they do alone, and every cell has one row."""
    from memlaw.train.method import SFT

    real, calls = SFT.weights, {}

    def diverging(self, tokens, record_ids):
        weights, info = real(self, tokens, record_ids)
        calls[id(self)] = calls.get(id(self), 0) + 1
        return (weights * float("nan") if calls[id(self)] >= 3 else weights), info

    monkeypatch.setattr(SFT, "weights", diverging)
    grid = parse_grid(grid_values(tiny_model_dir, methods=["sft", "memft_ot"], ranks=[1, 2]), "grid.yaml")
    packed = run_sweep(grid, tmp_path / "on", pack="on", progress=False)
    assert packed["cell"].tolist() == [c.name for c in grid.cells()]
    failed = packed[packed["method"] == "sft"]
    assert failed["status"].eq("failed").all()
    assert failed["error"].str.contains("MemlawError: training diverged: the loss is nan").all()
    ok = packed[packed["method"] == "memft_ot"]
    assert ok["status"].eq("ok").all()
    monkeypatch.setattr(SFT, "weights", real)
    alone = run_sweep(parse_grid(grid_values(tiny_model_dir, methods=["memft_ot"], ranks=[1, 2]), "g"), tmp_path / "off",
                      pack="off", progress=False)
    pd.testing.assert_frame_equal(rows(ok), rows(alone), check_exact=False, rtol=1e-5, atol=1e-6)


def test_a_cell_that_fails_to_set_up_fails_alone(tiny_model_dir, tmp_path, monkeypatch):
    import memlaw.train.trainer as trainer

    real = trainer.new_session

    def failing(cfg, *args, **kwargs):
        if cfg.rank == 2:
            raise MemlawError("cannot set up rank 2 (test)")
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(trainer, "new_session", failing)
    grid = parse_grid(grid_values(tiny_model_dir, methods=["sft"]), "grid.yaml")
    packed = run_sweep(grid, tmp_path / "on", pack="on", progress=False)
    assert packed["status"].tolist() == ["ok", "failed", "ok", "ok"]
    assert "cannot set up rank 2" in packed["error"].iloc[1]
    monkeypatch.setattr(trainer, "new_session", real)
    alone = run_sweep(parse_grid(grid_values(tiny_model_dir, methods=["sft"], ranks=[1, 4, 8]), "g"), tmp_path / "off",
                      pack="off", progress=False)
    pd.testing.assert_frame_equal(rows(packed[packed["status"] == "ok"]), rows(alone), check_exact=False, rtol=1e-5,
                                  atol=1e-6)


def test_which_cells_pack(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    cells = parse_grid(grid_values(tiny_model_dir, lengths=[60, 80]), "g").cells()  # two data files
    assert [len(p) for p in packs(cells, data, "off")] == [1] * 24
    by_data = packs(cells, data, "auto")
    assert [len(p) for p in by_data] == [12, 12] and all(len({c.length for c in p}) == 1 for p in by_data)
    wide = grid_values(tiny_model_dir)
    wide["train"]["batch_size"] = 24  # at most 64 records a micro-batch: two cells of 24
    assert [len(p) for p in packs(parse_grid(wide, "g").cells(), data, "auto")] == [2] * 6
    lora = grid_values(tiny_model_dir)
    lora["train"]["component"] = "lora"
    lora_cells = parse_grid(lora, "g").cells()
    assert [len(p) for p in packs(lora_cells, data, "auto")] == [1] * 12
    with pytest.raises(MemlawError, match="--pack on: cell phonebook-sft-r1-L60-s42 cannot pack .lora units train alone."):
        packs(lora_cells, data, "on")
    with pytest.raises(MemlawError, match="--pack: must be one of auto, on, off"):
        packs(cells, data, "sometimes")
    # Ray, --pack auto: packs split until every worker has one
    assert [len(p) for p in spread(by_data, 3)] == [6, 6, 12]
    assert [len(p) for p in spread(by_data, 4)] == [6, 6, 6, 6]
    assert [c.name for p in spread(by_data, 5) for c in p] == [c.name for p in by_data for c in p]
    assert [len(p) for p in spread([[cells[0]], [cells[1]]], 8)] == [1, 1]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_packed_rows_on_cuda(tiny_model_dir, tmp_path):
    """On a GPU (bf16 by default): packed and one-at-a-time rows agree to bf16's precision, dropout on."""
    values = grid_values(tiny_model_dir)
    values["train"].update(device="cuda", dropout=0.1)
    grid = parse_grid(values, "grid.yaml")
    alone = run_sweep(grid, tmp_path / "off", pack="off", progress=False)
    packed = run_sweep(grid, tmp_path / "on", pack="on", progress=False)
    assert packed["status"].eq("ok").all()
    pd.testing.assert_frame_equal(rows(packed), rows(alone), check_exact=False, rtol=1e-2, atol=1e-2)


def test_packed_linear_rule_cells_are_evaluated_on_their_held_out_pairs(tiny_model_dir, tmp_path):
    values = grid_values(tiny_model_dir, benchmark="linear-rule", methods=["sft", "memft_ot"], ranks=[1, 2],
                         lengths=None, records=[8], heldout=5)
    grid = parse_grid(values, "grid.yaml")
    assert [len(p) for p in packs(grid.cells(), tmp_path / "data", "auto")] == [4]
    alone = run_sweep(grid, tmp_path / "off", pack="off", progress=False)
    packed = run_sweep(grid, tmp_path / "on", pack="on", progress=False)
    assert packed["status"].eq("ok").all() and packed["heldout_exact_match"].notna().all()
    pd.testing.assert_frame_equal(rows(packed), rows(alone), check_exact=False, rtol=1e-5, atol=1e-6)
