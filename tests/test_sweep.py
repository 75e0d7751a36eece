"""Sweeps on the tiny model: grid validation, presets, local and Ray runners, resume, kill -9, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from memlaw.cli import main
from memlaw.errors import MemlawError
from memlaw.sweep import COLUMNS, TIMING_COLUMNS, list_presets, load_grid, load_preset, parse_grid, run_sweep
from memlaw.sweep.grid import ensure_data
from memlaw.train.method import method_for

SCHEMA = [
    "cell", "status", "error", "model", "benchmark", "ratio", "method", "rank", "length", "seed", "data_seed",
    "layer", "component", "lr", "epochs", "batch_size", "n_records", "target_tokens", "exact_match",
    "token_accuracy", "free_run_token_accuracy", "initial_loss", "final_loss", "delta_loss", "initial_answer_loss",
    "final_answer_loss", "delta_answer_loss", "stubborn_tokens",
    "certified_fraction", "certificate_violations", "loss_bits", "trainable_params", "bits_per_param",
    "bits_memorized", "information_bits", "information_source", "format_floor_loss", "memorized_delta_loss", "steps",
    "train_seconds", "stopped", "steps_to_certified", "seconds_to_certified", "heldout_exact_match", "run_dir",
]
PAPER_8B = ["llama3.1-8b-long-context", "llama3.1-8b-phonebook", "qwen3-8b-long-context", "qwen3-8b-phonebook"]
PRESETS = [*PAPER_8B, "smollm2-demo", "smollm2-paper-linear-rule", "smollm2-paper", "smollm2-regime"]


def tiny_grid(model_dir, **changes) -> dict:
    grid = {
        "name": "tiny", "model": str(model_dir), "benchmark": "phonebook", "methods": ["memft_ot"],
        "ranks": [1, 4], "lengths": [20, 40], "seeds": [42], "layer": 1,
        "train": {"lr": 0.1, "epochs": 2, "batch_size": 4, "dropout": 0.0, "device": "cpu"},
    }
    grid.update(changes)
    return grid


def write_grid(path, values: dict):
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=list(TIMING_COLUMNS))


@pytest.fixture(scope="module")
def local_sweep(tiny_model_dir, tmp_path_factory):
    """The tiny grid run once with the local engine: (grid, out dir, returned frame)."""
    out = tmp_path_factory.mktemp("sweep") / "local"
    grid = parse_grid(tiny_grid(tiny_model_dir), "grid.yaml")
    return grid, out, run_sweep(grid, out, progress=False)


# ---------------------------------------------------------------------- grids
@pytest.mark.parametrize("change, field", [
    ({"ranks": []}, "ranks"),
    ({"ranks": [0, 2]}, "ranks"),
    ({"lengths": [20, 20]}, "lengths"),
    ({"seeds": "42"}, "seeds"),
    ({"benchmark": "quiz"}, "benchmark"),
    ({"methods": ["sft", "magic"]}, "methods"),
    ({"model": None}, "model"),
    ({"ratios": ["r20"]}, "ratios"),
    ({"benchmark": "long-context"}, "ratios"),
    ({"benchmark": "long-context", "ratios": ["r33"]}, "ratios"),
    ({"heldout": 10}, "heldout"),
    ({"records": [8]}, "records"),  # phonebook is sized in answer tokens
    ({"benchmark": "linear-rule"}, "lengths"),  # the linear rule in training pairs: records
    ({"benchmark": "linear-rule", "lengths": None}, "records"),
    ({"benchmark": "linear-rule", "lengths": None, "records": [8], "blocks": [{"lengths": [20]}]}, r"blocks\[0\]\.lengths"),
    ({"layer": "a,b"}, "layer"),
    ({"data_seed": -1}, "data_seed"),
    ({"train": {"lr": -1}}, "train"),
    ({"train": {"rank": 4}}, "train"),
    ({"train": {"learning_rate": 0.1}}, "train"),
    ({"by_method": {"sft": {"lr": 0.1}}}, "by_method"),
    ({"by_length": {999: {"epochs": 3}}}, "by_length"),
    ({"by_length": {20: {"epochs": 0}}}, "by_length.20"),
    ({"by_method_length": {"memft_ot": {40: {"batch_size": -2}}}}, "by_method_length.memft_ot.40"),
    ({"blocks": []}, "blocks"),
    ({"blocks": {"ranks": [1]}}, "blocks"),
    ({"blocks": [{"ranks": [1]}, {}]}, r"blocks\[1\]"),
    ({"blocks": [{"rank": [1]}]}, r"blocks\[0\]"),
    ({"blocks": [{"ranks": [8]}]}, r"blocks\[0\]\.ranks"),
    ({"blocks": [{"ranks": [1, 1]}]}, r"blocks\[0\]\.ranks"),
    ({"blocks": [{"lengths": "20"}]}, r"blocks\[0\]\.lengths"),
    ({"blocks": [{"ratios": ["r0"]}]}, r"blocks\[0\]\.ratios"),
    ({"blocks": [{"ranks": [1]}, {"ranks": [1], "lengths": [20]}]}, "blocks"),  # rank 4 is in no block
    ({"methods": ["sft", "memft_ot"], "blocks": [{"methods": ["sft"], "lengths": [20]}, {"methods": ["memft_ot"]}],
      "by_method_length": {"sft": {40: {"epochs": 3}}}}, "by_method_length.sft.40"),
    ({"source": "text.txt"}, "source"),
    ({"benchmark": "long-context", "ratios": ["r0"], "source": "/no/such/file.txt"}, "source"),
    ({"benchmark": "long-context", "ratios": ["r0"], "source": 3}, "source"),
])
def test_grid_errors_name_the_field(tmp_path, change, field):
    path = write_grid(tmp_path / "grid.yaml", tiny_grid("/m", **change))
    with pytest.raises(MemlawError, match=rf"^grid\.yaml: field '{field}': "):
        load_grid(path)


def test_a_linear_rule_grid_is_sized_in_records_and_keeps_length_for_answer_tokens(tmp_path):
    values = tiny_grid("/m", benchmark="linear-rule", methods=["sft"], ranks=[1], lengths=None, records=[8, 16])
    grid = load_grid(write_grid(tmp_path / "grid.yaml", values))
    assert [(c.name, c.length, c.records) for c in grid.cells()] == [
        ("linear-rule-sft-r1-N8-s42", None, 8), ("linear-rule-sft-r1-N16-s42", None, 16)]
    assert grid.cells()[0].data_name == "linear-rule-N8-d42"
    again = load_grid(write_grid(tmp_path / "again.yaml", grid.to_dict()))  # grid.yaml as a sweep writes it
    assert again == grid and "lengths" not in grid.to_dict()
    with pytest.raises(MemlawError, match="write records: "):
        load_grid(write_grid(tmp_path / "old.yaml", tiny_grid("/m", benchmark="linear-rule", lengths=[32])))


def test_grid_error_unknown_field_and_merged_cell_config(tmp_path):
    with pytest.raises(MemlawError, match="unknown field 'rank'"):
        parse_grid(tiny_grid("/m", rank=[1]), "grid.yaml")
    bad = tiny_grid("/m", methods=["memft_sw"], by_method={"memft_sw": {"curriculum_boundaries": [1, 2, 3, 4, 5]}},
                    by_length={40: {"curriculum_ratios": [0.5, 1.0]}})
    with pytest.raises(MemlawError, match=r"cell phonebook-memft_sw-r1-L40-s42: .*curriculum-boundaries"):
        parse_grid(bad, "grid.yaml")


def test_cells_names_and_override_precedence(tmp_path):
    values = tiny_grid(
        "/m", benchmark="long-context", ratios=["r0", "r20"], methods=["sft", "memft_sw"], seeds=[1, 2], layer="1,2",
        train={"lr": "1e-2", "epochs": 5},
        by_method={"memft_sw": {"epochs": 6, "batch_size": 2}},
        by_length={40: {"epochs": 7, "grad_accum": 2}},
        by_method_length={"memft_sw": {40: {"epochs": 8}}},
    )
    grid = load_grid(write_grid(tmp_path / "grid.yaml", values))
    cells = grid.cells()
    assert [c.name for c in cells] == [c.name for c in load_grid(tmp_path / "grid.yaml").cells()]
    assert len({c.name for c in cells}) == len(cells) == 2 * 2 * 2 * 2 * 2
    assert cells[0].name == "long-context-r0-sft-r1-L20-s1"
    by_name = {c.name: c for c in cells}
    sw40 = by_name["long-context-r20-memft_sw-r4-L40-s2"]
    assert (sw40.ratio, sw40.method, sw40.rank, sw40.length, sw40.seed, sw40.data_seed) == ("r20", "memft_sw", 4, 40, 2, 2)
    cfg = sw40.train_config("data.jsonl")
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.layer, cfg.length) == (0.01, 8, 2, 2, [1, 2], 40)
    assert by_name["long-context-r0-sft-r1-L40-s1"].train_config("d").epochs == 7
    assert by_name["long-context-r0-memft_sw-r1-L20-s1"].train_config("d").epochs == 6
    assert by_name["long-context-r0-sft-r1-L20-s1"].train_config("d").epochs == 5
    assert sw40.data_name == by_name["long-context-r20-sft-r1-L40-s2"].data_name == "long-context-r20-L40-d2"
    assert parse_grid({**values, "data_seed": 7}, "g").cells()[-1].data_seed == 7


def test_blocks_select_a_union_of_partial_grids_in_product_order():
    values = tiny_grid("/m", benchmark="long-context", ratios=["r0", "r100"], methods=["sft", "memft_ot"],
                       ranks=[1, 2, 64], lengths=[20, 40, 80], seeds=[1, 2])
    full = [c.name for c in parse_grid(values, "g").cells()]
    blocks = [
        {"ratios": ["r100"], "lengths": [40, 20]},               # every method and rank on r100, two lengths
        {"methods": ["sft"], "ranks": [2, 1], "seeds": [1]},    # sft, low ranks, seed 1, every ratio and length
        {"ratios": ["r100"], "methods": ["sft"], "ranks": [64]},  # overlaps the first block: kept once
    ]
    grid = parse_grid({**values, "blocks": blocks}, "g")
    names = [c.name for c in grid.cells()]
    expected = [
        n for n in full  # the product's order, whichever block selects a cell
        if ("-r100-" in n and ("-L20-" in n or "-L40-" in n))
        or ("-sft-" in n and ("-r1-" in n or "-r2-" in n) and n.endswith("-s1"))
        or n.startswith("long-context-r100-sft-r64-")
    ]
    # 24 + 12 + 6 cells, less the 4 the first block shares with each of the others
    assert names == expected and len(set(names)) == len(names) == 24 + 12 + 6 - 4 - 4
    assert grid.blocks[0] == {"ratios": ["r100"], "lengths": [20, 40]}  # kept in the grid's order
    assert "long-context-r0-memft_ot-r1-L20-s1" not in names and "long-context-r100-sft-r64-L80-s2" in names
    # the grid file round trip (DIR/grid.yaml) keeps the blocks; a grid without them is the whole product
    assert [c.name for c in parse_grid(grid.to_dict(), "g").cells()] == names
    assert "blocks" not in parse_grid(values, "g").to_dict() and "source" not in parse_grid(values, "g").to_dict()
    assert [c.name for c in parse_grid({**values, "blocks": [{"seeds": [1, 2]}]}, "g").cells()] == full


def test_source_is_absolute_names_the_data_and_reaches_data_generation(tmp_path, monkeypatch):
    text = tmp_path / "My Text.txt"
    text.write_text("Some natural text.", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    values = tiny_grid("/m", benchmark="long-context", ratios=["r20"], lengths=[40])
    plain, custom = parse_grid(values, "g"), parse_grid({**values, "source": "My Text.txt"}, "g")
    assert custom.source == str(text.resolve()) and plain.source is None
    assert plain.cells()[0].data_name == "long-context-r20-L40-d42"  # unchanged without a source
    tag = custom.cells()[0].data_name
    assert tag.startswith("long-context-r20-L40-d42-My_Text-") and len(tag) == len("long-context-r20-L40-d42-My_Text-") + 8
    other = tmp_path / "b" / "My Text.txt"
    other.parent.mkdir()
    other.write_text("Other text.", encoding="utf-8")
    assert parse_grid({**values, "source": str(other)}, "g").cells()[0].data_name != tag
    assert [c.name for c in custom.cells()] == [c.name for c in plain.cells()]  # cell names do not change

    seen = []
    monkeypatch.setattr("memlaw.sweep.grid.generate", lambda spec, *a: (seen.append(spec), ([{"q": 1}], None))[1])
    path, _ = ensure_data(custom, custom.cells()[0], tmp_path / "data")
    assert seen[0].source == str(text.resolve()) and path.name == f"{tag}.jsonl"


def test_data_is_deterministic_and_shared(local_sweep, tmp_path):
    grid, out, _ = local_sweep
    assert sorted(p.name for p in (out / "data").iterdir()) == ["phonebook-L20-d42.jsonl", "phonebook-L40-d42.jsonl"]
    cell = grid.cells()[-1]
    again, _ = ensure_data(grid, cell, tmp_path)
    assert again.read_bytes() == (out / "data" / again.name).read_bytes()


# ---------------------------------------------------------------------- presets
def test_presets_load_and_list(capsys, tmp_path):
    assert list(list_presets()) == PRESETS
    assert main(["sweep", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS)
    demo = load_preset("smollm2-demo")
    assert demo.model == "default" and len(demo.cells()) == 16
    study = {c.name: c for c in load_preset("smollm2-paper").cells()}  # docs/reproduction.md's PhoneBook study
    assert len(study) == 48 and load_preset("smollm2-paper").layer is None  # None: two thirds of the depth
    sft, sw = (study[f"phonebook-{m}-r8-L320-s42"].train_config("d") for m in ("sft", "memft_sw"))
    assert (sft.lr, sft.epochs, sft.batch_size, sft.dropout, sft.max_grad_norm) == (1e-2, 200, 16, 0.1, 1.0)
    assert (sw.sw_mode, sw.epochs, sw.curriculum_boundaries, sw.batch_size) == ("curriculum", 300, [20, 40, 60, 80, 300], 16)
    regime = {c.name: c for c in load_preset("smollm2-regime").cells()}  # issue 25: the paper's step proportion, a band
    assert len(regime) == 42 and {(c.rank, c.length) for c in regime.values() if c.seed == 42} == {
        (r, n * r) for r in (1, 2, 3, 4) for n in (100, 200, 400)}
    assert {c.name for c in regime.values() if c.seed == 43} == {
        f"phonebook-{m}-r{r}-L{100 * r}-s43" for m in ("sft", "memft_ot") for r in (1, 2, 3)}
    assert {c.data_seed for c in regime.values()} == {42}  # seed 43 trains the same records
    sft, sw = (regime[f"phonebook-{m}-r4-L1600-s42"].train_config("d") for m in ("sft", "memft_sw"))
    assert (sft.batch_size, sft.epochs, sft.lr, sft.dropout, sft.dtype, sft.log_token_probs) == (4, 200, 1e-2, 0.1, "float32", 400)
    assert (sw.batch_size, sw.epochs, sw.curriculum_boundaries, sw.log_token_probs) == (10, 300, [20, 40, 60, 80, 300], 240)
    linear = load_preset("smollm2-paper-linear-rule")
    assert linear.benchmark == "linear-rule" and len(linear.cells()) == 6 and linear.heldout == 100
    for name in PAPER_8B:
        with pytest.raises(MemlawError, match=rf"preset {name} needs --model PATH \(the model is not shipped\)"):
            load_preset(name)
        grid = load_preset(name, model="/models/x")
        assert grid.model == "/models/x" and grid.train["device"] == "cuda" and grid.train["dtype"] == "bfloat16"
    assert main(["sweep", "--preset", "qwen3-8b-phonebook", "--out", str(tmp_path / "o")]) == 2
    assert "preset qwen3-8b-phonebook needs --model PATH" in capsys.readouterr().err
    qwen = {c.name: c for c in load_preset("qwen3-8b-phonebook", model="/m").cells()}
    sw = qwen["phonebook-memft_sw-r8-L32000-s42"].train_config("d")
    assert (sw.lr, sw.epochs, sw.batch_size, sw.grad_accum, sw.curriculum_boundaries) == (5e-3, 700, 40, 2, [100, 200, 300, 400, 700])
    assert qwen["phonebook-sft-r8-L32000-s42"].train_config("d").batch_size == 16


# ---------------------------------------------------------------------- parity with the paper's sweeps
# DESIGN §8 (the reference scripts' defaults), written out as lists; the expected cells are computed from them.
PB_LENGTHS = [1000, 2000, 4000, 8000, 12000, 16000, 24000, 32000]
PB_RANKS = [1, 2, 4, 8, 16, 32, 64]
METHODS = ["sft", "memft_ot", "memft_sw"]
LC_RATIOS = ["r0", "r20", "r40", "r60", "r80", "r100"]
LC_RANKS_R100 = [1, 2, 4, 6, 8, 10, 12, 14, 16, 24, 32, 48, 64, 128, 256, 512]
LC_RANKS_LOW = [1, 2, 4, 6, 8, 10, 12, 14, 16]  # r0-r80
LC_LENGTHS = [50, 100, 200, 500, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
LC_EXTRA = [8000, 10000]  # SFT on r0-r80, and Qwen SFT on r100


def paper_cells(preset: str) -> set[tuple]:
    """(ratio, method, rank, length) of every run of the paper's sweep for a preset, from DESIGN §8."""
    if preset.endswith("phonebook"):
        return {(None, m, r, n) for m in METHODS for r in PB_RANKS for n in PB_LENGTHS}
    qwen = preset.startswith("qwen")
    out = set()
    for ratio in LC_RATIOS:
        methods = METHODS if ratio == "r100" else ["sft"]  # MemFT on r100 only
        ranks = LC_RANKS_R100 if ratio == "r100" else LC_RANKS_LOW
        for m in methods:
            extra = m == "sft" and (ratio != "r100" or qwen)
            out |= {(ratio, m, r, n) for r in ranks for n in LC_LENGTHS + (LC_EXTRA if extra else [])}
    return out


@pytest.mark.parametrize("preset, count, layer", [
    ("qwen3-8b-phonebook", 168, 24), ("llama3.1-8b-phonebook", 168, 18),
    ("qwen3-8b-long-context", 1145, 24), ("llama3.1-8b-long-context", 1113, 18),
])
def test_presets_are_the_papers_sweeps(preset, count, layer):
    cells = load_preset(preset, model="/m").cells()
    expected = paper_cells(preset)
    got = [(c.ratio, c.method, c.rank, c.length) for c in cells]
    assert len(got) == len(set(got)) == len(expected) == count and set(got) == expected
    assert {c.seed for c in cells} == {42} and all(c.train_config("d").layer == [layer] for c in cells)
    per = {}
    for ratio, method, rank, length in got:
        entry = per.setdefault((method, ratio), [0, set(), set()])
        entry[0] += 1
        entry[1].add(rank)
        entry[2].add(length)
    if preset.endswith("long-context"):
        assert "memft_ot" not in {m for (m, r) in per if r == "r40"}  # MemFT only on r100
        assert {ratio for (ratio, _, rank, _) in got if rank == 512} == {"r100"}
        assert {m for (_, m, _, n) in got if n == 10000} == {"sft"}
        for (method, ratio), (n, ranks, lengths) in per.items():
            assert ranks == set(LC_RANKS_R100 if ratio == "r100" else LC_RANKS_LOW)
            assert n == len(ranks) * len(lengths)
        assert per[("sft", "r100")][2] == set(LC_LENGTHS + (LC_EXTRA if preset.startswith("qwen") else []))
        assert per[("memft_sw", "r100")][2] == set(LC_LENGTHS)
        for c in cells:  # DESIGN §3: lr 1e-2, 2000 epochs, batch 1
            cfg = c.train_config("d")
            assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum) == (1e-2, 2000, 1, 1)
    else:
        assert all(n == len(PB_RANKS) * len(PB_LENGTHS) for n, _, _ in per.values())
        sizes = {c.train_config("d").batch_size for c in cells if c.method != "memft_sw"}
        assert (min(sizes), max(sizes)) == ((4, 16) if preset.startswith("qwen") else (10, 20))  # DESIGN §3


def test_qwen_phonebook_memft_sw_settings_by_length():
    """DESIGN §3: Qwen memft_sw at 1000-2000 answer tokens and at 32000."""
    qwen = {c.name: c.train_config("d") for c in load_preset("qwen3-8b-phonebook", model="/m").cells()}
    for length in (1000, 2000):
        sw = qwen[f"phonebook-memft_sw-r1-L{length}-s42"]
        assert (sw.lr, sw.epochs, sw.batch_size, sw.grad_accum, sw.curriculum_boundaries) == (1e-2, 300, 10, 1, [20, 40, 60, 80, 300])
    sw = qwen["phonebook-memft_sw-r64-L32000-s42"]
    assert (sw.lr, sw.epochs, sw.batch_size, sw.grad_accum, sw.curriculum_boundaries) == (5e-3, 700, 40, 2, [100, 200, 300, 400, 700])
    assert sw.curriculum_ratios == [0.2, 0.4, 0.6, 0.8, 1.0] and sw.sw_mode == "curriculum"
    assert method_for(sw, 3200).zero_bp  # the curriculum skips a batch without hard tokens (zero-bp)
    sft = qwen["phonebook-sft-r1-L1000-s42"]
    assert (sft.lr, sft.epochs, sft.batch_size, sft.curriculum_boundaries) == (1e-2, 200, 4, None)


# ---------------------------------------------------------------------- local engine
def test_local_sweep_results_and_resume(local_sweep):
    grid, out, frame = local_sweep
    assert list(frame.columns) == SCHEMA == list(COLUMNS)
    names = [c.name for c in grid.cells()]
    assert frame["cell"].tolist() == names and frame["status"].eq("ok").all()
    assert frame["error"].isna().all() and frame["heldout_exact_match"].isna().all() and frame["ratio"].isna().all()
    assert frame["layer"].eq("1").all() and frame["run_dir"].tolist() == [f"cells/{n}" for n in names]
    assert frame["n_records"].tolist() == [2, 4, 2, 4] and frame["trainable_params"].tolist() == [128, 128, 512, 512]
    parquet, csv = pd.read_parquet(out / "results.parquet"), pd.read_csv(out / "results.csv")
    assert parquet["cell"].tolist() == csv["cell"].tolist() == names
    pd.testing.assert_frame_equal(parquet, frame)
    assert yaml.safe_load((out / "grid.yaml").read_text())["ranks"] == [1, 4]

    mtimes = {n: (out / "cells" / n / "metrics.json").stat().st_mtime_ns for n in names}
    again = run_sweep(grid, out, progress=False)
    assert again.attrs["skipped"] == 4
    assert {n: (out / "cells" / n / "metrics.json").stat().st_mtime_ns for n in names} == mtimes
    pd.testing.assert_frame_equal(again, frame)


def test_different_grid_is_refused_unless_overwrite(local_sweep, tiny_model_dir, tmp_path):
    _, out, _ = local_sweep
    other = parse_grid(tiny_grid(tiny_model_dir, ranks=[2]), "g")
    with pytest.raises(MemlawError, match="holds a different sweep"):
        run_sweep(other, out, progress=False)
    copy = tmp_path / "copy"
    first = parse_grid(tiny_grid(tiny_model_dir, lengths=[20], ranks=[1]), "g")
    run_sweep(first, copy, progress=False)
    frame = run_sweep(other, copy, overwrite=True, progress=False)
    assert frame["cell"].tolist() == ["phonebook-memft_ot-r2-L20-s42", "phonebook-memft_ot-r2-L40-s42"]
    assert sorted(p.name for p in (copy / "cells").iterdir()) == frame["cell"].tolist()


def test_failed_cell_is_recorded_and_others_finish(tiny_model_dir, tmp_path, capsys):
    """Linear-rule: 10001 training pairs cannot be drawn from 100x100, so that cell fails."""
    values = tiny_grid(tiny_model_dir, benchmark="linear-rule", methods=["sft"], ranks=[2], lengths=None, records=[6, 10001],
                       heldout=5)
    grid_path = write_grid(tmp_path / "lin.yaml", values)
    out = tmp_path / "lin"
    assert main(["sweep", str(grid_path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "failed cells" in err and "linear-rule-sft-r2-N10001-s42" in err
    frame = pd.read_parquet(out / "results.parquet")
    ok, failed = frame.iloc[0], frame.iloc[1]
    assert ok["status"] == "ok" and 0.0 <= ok["heldout_exact_match"] <= 1.0 and pd.isna(ok["error"])
    assert ok["n_records"] == 6 and ok["length"] == ok["target_tokens"] > 6  # sized in pairs; length: answer tokens
    assert failed["status"] == "failed" and "MemlawError: linear-rule: only 10000 distinct" in failed["error"]
    assert pd.isna(failed["exact_match"])
    error_file = out / "cells" / failed["cell"] / "error.json"
    assert {"type", "message", "traceback"} <= set(yaml.safe_load(error_file.read_text()))

    stamp = error_file.stat().st_mtime_ns
    assert main(["sweep", str(grid_path), "--out", str(out)]) == 1  # kept as failed, not re-run
    assert error_file.stat().st_mtime_ns == stamp
    assert main(["sweep", str(grid_path), "--out", str(out), "--retry-failed"]) == 1
    assert error_file.stat().st_mtime_ns != stamp


def test_kill_9_then_resume(tiny_model_dir, tmp_path):
    grid_path = write_grid(tmp_path / "grid.yaml", tiny_grid(
        tiny_model_dir, ranks=[1, 2], lengths=[20, 30, 40], train={"lr": 0.1, "epochs": 20, "batch_size": 2, "dropout": 0.0}
    ))
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "memlaw.cli", "sweep", str(grid_path), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    done = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list(out.glob("cells/*/metrics.json")))
            if done >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be killed"
        assert 1 <= done < 6
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert main(["sweep", str(grid_path), "--out", str(out)]) == 0
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == 6 and frame["cell"].is_unique and frame["status"].eq("ok").all()
    assert frame["cell"].tolist() == [c.name for c in load_grid(grid_path).cells()]


# ---------------------------------------------------------------------- ray engine
def test_ray_engine_matches_local(local_sweep, tmp_path):
    grid, _, local = local_sweep
    frame = run_sweep(grid, tmp_path / "ray", engine="ray", workers=2, progress=False)
    # Ray gives each worker one thread, the local run two: float sums may round differently
    pd.testing.assert_frame_equal(without_timing(frame), without_timing(local), check_exact=False, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / "results.parquet"), frame)


def test_ray_missing_and_engine_flags(local_sweep, tmp_path, monkeypatch):
    grid, _, _ = local_sweep
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(MemlawError, match=r"the ray engine needs Ray: pip install 'memlaw\[ray\]'"):
        run_sweep(grid, tmp_path / "noray", engine="ray", progress=False)
    with pytest.raises(MemlawError, match="--address and --workers apply to --engine ray"):
        run_sweep(grid, tmp_path / "x", workers=2, progress=False)
