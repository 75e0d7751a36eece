"""Phase-transition analysis (memlaw.analysis) on synthetic sweep folders in the documented format.

`make_sweep` (also used by test_report.py) writes results.parquet, one records.jsonl per ok cell
and, optionally, a law.json generated from known parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from memlaw.analysis import (
    analyze,
    bin_profile,
    cell_matrices,
    cell_matrix,
    certificate_check,
    earliest_stubborn,
    failure_histograms,
    load_or_analyze,
    min_pool,
    probability_grid,
    read_analysis,
    spearman,
)
from memlaw.cli import main
from memlaw.tables import cell_sort_key, csv_rows, finite, plain_dtypes, split_by, spread

MODEL = "tiny-llama"
TARGET_LEN = 10
RECORDS_PER_CELL = 4
# Known law parameters per method: ΔL = C · r^α · ℓ^(−β) + b.
LAW = {
    "sft": {"C": 2.0, "alpha": 0.5, "beta": 0.3, "b": 0.1},
    "memft_ot": {"C": 2.5, "alpha": 0.45, "beta": 0.25, "b": 0.05},
}
# A third method for sweeps without a law (law.json covers LAW's methods only), and how well each method recalls.
DATA_LAW = {**LAW, "memft_sw": {"C": 3.0, "alpha": 0.4, "beta": 0.2, "b": 0.02}}
EM_SCALE = {"sft": 1.0, "memft_ot": 1.3, "memft_sw": 1.7}
JITTER = {"sft": 1, "memft_ot": 2, "memft_sw": 3}  # make_sweep(jitter=True): a different ρ per method
DTYPES = {"cell": "string", "status": "string", "error": "string", "model": "string", "benchmark": "string",
          "ratio": "string", "method": "string", "rank": "Int64", "length": "Int64", "seed": "Int64",
          "run_dir": "string"}


def cell_name(method: str, rank: int, length: int, seed: int, ratio: str | None = None,
              bench: str | None = None) -> str:
    return f"{bench or benchmark(ratio)}{'-' + ratio if ratio else ''}-{method}-r{rank}-L{length}-s{seed}"


def law_value(method: str, rank: int, length: int) -> float:
    p = DATA_LAW[method]
    return p["C"] * rank ** p["alpha"] * length ** (-p["beta"]) + p["b"]


def cell_records(rank: int, length: int, jitter: int = 0) -> list[dict]:
    """Record 0 certified and exact; record j > 0 has its earliest stubborn token at s and fails at s + 1
    (or, with a jitter, at s + 1 or s + 2: ρ below 1 but no certificate violation)."""
    rows = []
    for j in range(RECORDS_PER_CELL):
        probs = [0.9] * TARGET_LEN
        fail = None
        if j:
            s = (j + rank + length // 100) % 8
            probs[s], probs[s + 1] = 0.3, 0.45
            fail = s + 1 + int(jitter > 0 and (j + rank) % (jitter + 1) == 0)
        stubborn = [i for i, p in enumerate(probs) if p <= 0.5]
        rows.append({
            "id": j, "query": f"Name {j}:", "target": "0123456789", "generated": "0123456789" if fail is None else "0123456780",
            "exact": fail is None, "first_failure": fail, "target_probs": probs,
            "stubborn_positions": stubborn, "certified": not stubborn,
        })
    return rows


def law_json(methods=tuple(LAW), ratios=(None,)) -> dict:
    def entry(p: dict, n: int) -> dict:
        ci = {k: [v * 0.9, v * 1.1] for k, v in p.items()}
        return {"n": n, **p, "ci": ci, "r2": 0.987, "mape": 1.25, "bootstrap": [[p["C"], p["alpha"], p["beta"], p["b"]]] * 3}

    return {
        "groups": [{"key": {"model": MODEL, "benchmark": benchmark(ratio), "ratio": ratio, "method": m},
                    **entry(LAW[m], 12)} for m in methods for ratio in ratios],
        "combined": entry({"C": 2.2, "alpha": 0.47, "beta": 0.27, "b": 0.07}, 24),
        "skipped": [],
    }


def benchmark(ratio: str | None) -> str:
    return "phonebook" if ratio is None else "long-context"


def make_sweep(root: Path, ranks=(1, 2, 4, 8), lengths=(100, 200, 400), methods=tuple(LAW), seeds=(0,),
               ratios=(None,), failed=(), missing_records=(), law: bool = False, linear_rule=(),
               jitter: bool = False) -> Path:
    """A sweep folder; `failed` and `missing_records` are cell names to mark failed / leave without records.

    A ratio of None is PhoneBook; "r20" etc. are Long-Context cells. `linear_rule` adds linear-rule cells at
    those lengths (every method and rank); `jitter` moves some failures one token later, per method.
    """
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    settings = [(benchmark(r), r, lengths) for r in ratios] + ([("linear-rule", None, linear_rule)] if linear_rule else [])
    for method, (bench, ratio, bench_lengths) in [(m, s) for m in methods for s in settings]:
        for rank in ranks:
            for length in bench_lengths:
                for seed in seeds:
                    name = cell_name(method, rank, length, seed, ratio, bench)
                    ok = name not in failed
                    dl = law_value(method, rank, length) * (1 + 0.01 * seed) if ok else None
                    em = min(1.0, rank * 100 / length / 4 * EM_SCALE[method]) * (1 - 0.1 * seed) if ok else None
                    rows.append({
                        "cell": name, "status": "ok" if ok else "failed", "error": None if ok else "RuntimeError: CUDA out of memory",
                        "model": MODEL, "benchmark": bench, "ratio": ratio, "method": method, "rank": rank,
                        "length": length, "seed": seed, "data_seed": 0, "layer": "20", "component": "mlp", "lr": 1e-3,
                        "epochs": 10, "batch_size": 16, "n_records": RECORDS_PER_CELL, "target_tokens": length,
                        "exact_match": em, "token_accuracy": None if em is None else 0.5 + em / 2,
                        "free_run_token_accuracy": None if em is None else em ** 0.5, "initial_loss": 12.0, "final_loss": None if dl is None else 12.0 - dl,
                        "delta_loss": dl, "stubborn_tokens": 3, "certified_fraction": 0.25, "certificate_violations": 0,
                        "loss_bits": length * (1 + 0.01 * seed), "trainable_params": 100 * rank,
                        "bits_per_param": length * (1 + 0.01 * seed) / (100 * rank), "steps": 50,
                        "train_seconds": 1.0, "stopped": "epochs", "steps_to_certified": None, "seconds_to_certified": None,
                        "heldout_exact_match": em * 0.6 if ok and bench == "linear-rule" else None,
                        "run_dir": f"cells/{name}",
                    })
                    if ok and name not in missing_records:
                        path = root / "cells" / name / "records.jsonl"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        noise = JITTER[method] if jitter else 0
                        path.write_text("".join(json.dumps(r) + "\n" for r in cell_records(rank, length, noise)))
    frame = pd.DataFrame(rows).astype(DTYPES)
    frame.to_parquet(root / "results.parquet", index=False)
    frame.to_csv(root / "results.csv", index=False)
    if law:
        (root / "law").mkdir(exist_ok=True)
        (root / "law" / "law.json").write_text(json.dumps(law_json(methods, ratios)))
    return root


def assert_one_line_error(rc: int, capsys, needle: str) -> None:
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("memlaw: error: ")]
    assert len(lines) == 1 and needle in lines[0], err


def records_table(first_failure, earliest, target_len=None) -> pd.DataFrame:
    n = len(first_failure)
    return pd.DataFrame({
        "cell": ["c"] * n, "id": list(range(n)), "method": ["sft"] * n,
        "target_len": target_len or [TARGET_LEN] * n,
        "first_failure": pd.array(first_failure, dtype="Int64"),
        "earliest_stubborn": pd.array(earliest, dtype="Int64"),
        "exact": [f is None for f in first_failure], "certified": [e is None for e in earliest],
    })


# ---------------------------------------------------------------------- pure functions
def test_earliest_stubborn():
    assert earliest_stubborn([]) is None and earliest_stubborn(None) is None
    assert earliest_stubborn([7, 2, 9]) == 2


def test_spearman_matches_scipy_and_handles_undefined_cases():
    x, y = [1, 4, 2, 8, 5, 7, 3], [2, 3, 1, 9, 4, 8, 6]
    ref = spearmanr(x, y)
    got = spearman(x, y)
    assert got["n"] == 7
    assert got["rho"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 400])["rho"] == pytest.approx(1.0)
    assert spearman([3], [4]) == {"rho": None, "p": None, "n": 1}
    assert spearman([1, 1, 1], [1, 2, 3])["rho"] is None


def test_certificate_check_counts_violations():
    # failures at/after the stubborn token (2), one before it, one with no stubborn token, one exact record
    table = records_table([3, 5, 1, 4, None], [3, 2, 2, None, 6])
    check = certificate_check(table)
    assert check["failures"] == 4 and check["pairs"] == 3 and check["at_or_after"] == 2
    assert check["at_or_after_fraction"] == pytest.approx(2 / 3)
    assert check["violations"] == 2
    assert [(v["first_failure"], v["earliest_stubborn"]) for v in check["violating_records"]] == [(1, 2), (4, None)]


def test_failure_histograms_counts_and_quartiles():
    table = records_table([0, 2, 2, 5, None], [0, 1, 1, 3, None], target_len=[10, 10, 4, 10, 10])
    h = failure_histograms(table, bins=6)
    assert h["absolute"]["edges"] == [0, 1, 2, 3, 4, 5, 6]  # one bin per position when they fit
    assert h["absolute"]["counts"] == [1, 0, 2, 0, 0, 1]
    assert h["absolute"]["quartiles"] == pytest.approx(np.percentile([0, 2, 2, 5], [25, 50, 75]).tolist())
    assert h["relative"]["edges"] == pytest.approx(np.linspace(0, 1, 7).tolist())
    assert h["relative"]["counts"] == [1, 1, 0, 2, 0, 0]  # 0 | 0.2 | 0.5, 0.5
    narrow = failure_histograms(table, bins=4)
    assert narrow["absolute"]["edges"] == [0, 1.5, 3, 4.5, 6] and narrow["absolute"]["counts"] == [1, 2, 0, 1]
    wide = failure_histograms(records_table([0, 99, 50], [0, 90, 40], [100] * 3), bins=4)
    assert len(wide["absolute"]["counts"]) == 4 and sum(wide["absolute"]["counts"]) == 3
    empty = failure_histograms(records_table([None], [None]), bins=4)
    assert sum(empty["absolute"]["counts"]) == 0 and empty["absolute"]["quartiles"] is None


def test_bin_profile_is_the_mean_over_relative_slices():
    assert bin_profile([1, 1, 0, 0], 2).tolist() == [1.0, 0.0]
    assert bin_profile([1, 1, 0, 0], 8).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # T=3, two slices of 1.5 tokens: the middle token (0.5) is split between them
    assert bin_profile([1, 0.5, 0], 2) == pytest.approx([(1 + 0.25) / 1.5, 0.25 / 1.5])


def test_probability_grid_weights_records_by_tokens():
    keys = {"model": "m", "benchmark": "phonebook", "ratio": None, "method": "sft", "length": 6, "rank": 2}
    records = pd.DataFrame([keys, keys])
    profiles = [
        (np.array([1.0, 1.0, 0.0, 0.0]), np.array([False, False, True, True])),
        (np.array([0.5, 0.5]), np.array([True, True])),
    ]
    grid = probability_grid(records, profiles, bins=2)
    assert len(grid) == 2 and grid["bin"].tolist() == [0, 1]
    assert grid["mean_p"].tolist() == pytest.approx([5 / 6, 1 / 6])
    assert grid["stubborn_fraction"].tolist() == pytest.approx([1 / 3, 1.0])
    assert grid["records"].tolist() == [2, 2]
    assert grid[["rel_start", "rel_end"]].to_numpy().tolist() == [[0.0, 0.5], [0.5, 1.0]]


def test_table_helpers_keep_missing_values_and_sort_ratios_numerically():
    df = plain_dtypes(pd.DataFrame({"ratio": pd.array(["r100", None, "r20"], dtype="string"),
                                    "rank": pd.array([4, 1, 2], dtype="Int64")}))
    assert df["rank"].dtype == "int64" and df["ratio"].tolist() == ["r100", None, "r20"]
    assert [key for key, _ in split_by(df, ("ratio",))] == [(None,), ("r20",), ("r100",)]  # None is a group, first
    assert sorted([(2.5,), ("b",), (None,)], key=cell_sort_key)[0] == (None,)
    assert csv_rows(pd.DataFrame({"x": [np.int64(3), np.nan]})) == [{"x": 3}, {"x": None}]
    assert [finite(v) for v in (1, "nan", None, "x", float("inf"))] == [1.0, None, None, None, None]
    assert spread([8, 1, 4, 2, 1], 10) == [1, 2, 4, 8]
    assert spread(range(13), 4) == [0, 4, 8, 12] and spread(["r100", "r20", "r5"], 2) == ["r5", "r100"]


def planted_record(n: int, stubborn: dict[int, float], fail: int | None) -> dict:
    probs = [0.95] * n
    for i, p in stubborn.items():
        probs[i] = p
    return {"id": 0, "exact": fail is None, "first_failure": fail, "target_probs": probs,
            "stubborn_positions": sorted(stubborn), "certified": not stubborn}


def test_cell_matrix_keeps_planted_stubborn_tokens_and_failures():
    """PhoneBook-like: many short records, capped at the first 32; the last rows are shorter (NaN-padded)."""
    records = [planted_record(10 if j < 30 else 8, {j % 8: 0.2}, j % 8 + 1 if j % 3 else None) for j in range(40)]
    m = cell_matrix(records)
    assert m.records == 40 and m.width == 1 and m.positions == 10 and m.probs.shape == m.stubborn.shape == (32, 10)
    planted = np.zeros((32, 10), dtype=bool)
    planted[np.arange(32), np.arange(32) % 8] = True
    assert (m.stubborn == planted).all() and (m.probs[planted] == 0.2).all()
    assert m.failures == [j % 8 + 1 if j % 3 else None for j in range(32)]
    assert np.isnan(m.probs[30:, 8:]).all() and not np.isnan(m.probs[:30]).any()


def test_cell_matrix_min_pools_long_targets():
    """Long-Context-like: one record of 1000 tokens -> 334 columns of 3 tokens; the lone stubborn token survives."""
    m = cell_matrix([planted_record(1000, {537: 0.2, 999: 0.4}, 537)], max_positions=400)
    assert m.width == 3 and m.probs.shape == (1, 334) and m.positions == 1000
    assert np.flatnonzero(m.stubborn[0]).tolist() == [179, 333]  # 537 // 3, 999 // 3 (the short last column)
    assert m.probs[0, 179] == 0.2 and m.probs[0, 333] == 0.4 and m.probs[0, 178] == 0.95
    assert (m.probs[0] <= 0.5).tolist() == m.stubborn[0].tolist()
    assert m.failures == [179]
    pooled = min_pool(np.array([[0.9, 0.1, 0.8, np.nan], [np.nan, np.nan, 0.7, 0.6]]), 2)
    assert pooled[0].tolist() == [0.1, 0.8] and np.isnan(pooled[1, 0]) and pooled[1, 1] == 0.6
    assert min_pool(np.array([[False, True, False]]), 2, np.logical_or).tolist() == [[True, False]]


def test_cell_matrices_reads_the_cells_records(tmp_path):
    missing = cell_name("sft", 2, 100, 0)
    sweep = make_sweep(tmp_path / "sweep", ranks=(1, 2), lengths=(100,), methods=("sft",), missing_records={missing})
    cells = pd.read_csv(sweep / "results.csv")
    matrices = cell_matrices(sweep, cells)
    assert set(matrices) == {cell_name("sft", 1, 100, 0)}
    m = matrices[cell_name("sft", 1, 100, 0)]
    expected = cell_records(1, 100)
    assert m.records == RECORDS_PER_CELL and m.failures == [r["first_failure"] for r in expected]
    assert [np.flatnonzero(row).tolist() for row in m.stubborn] == [r["stubborn_positions"] for r in expected]


# ---------------------------------------------------------------------- a whole sweep
def test_analyze_monotone_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    a = analyze(sweep, bins=5)
    cells = len(LAW) * 4 * 3
    s = a.summary
    assert s["records"] == cells * RECORDS_PER_CELL and s["cells"] == cells and s["skipped_cells"] == []
    assert s["exact"] == s["certified"] == cells
    assert s["spearman"]["rho"] == pytest.approx(1.0) and s["spearman"]["n"] == cells * (RECORDS_PER_CELL - 1)
    assert s["certificate"]["violations"] == 0 and s["certificate"]["at_or_after_fraction"] == 1.0
    assert len(a.grid) == cells * 5
    # every cell: 1 of 4 records all 0.9; the others dip at two positions -> mean p_t in (0.3, 0.9]
    assert a.grid["mean_p"].between(0.3, 0.9 + 1e-12).all()
    assert len(s["cells_summary"]) == cells and s["cells_summary"][0]["failures"] == RECORDS_PER_CELL - 1


def test_spearman_by_setting_matches_scipy_on_each_subset(tmp_path):
    """ρ per (benchmark, method) from the records.jsonl files themselves, by scipy; jittered failures make them differ."""
    sweep = make_sweep(tmp_path / "sweep", methods=tuple(DATA_LAW), linear_rule=(50,), jitter=True)
    by = analyze(sweep).summary["spearman_by"]
    results = pd.read_csv(sweep / "results.csv")
    pairs: dict[tuple, list] = {}
    for cell in results.to_dict("records"):
        for line in (sweep / cell["run_dir"] / "records.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["stubborn_positions"] and r["first_failure"] is not None:
                pairs.setdefault((cell["benchmark"], cell["method"]), []).append((min(r["stubborn_positions"]), r["first_failure"]))
    assert [(e["benchmark"], e["method"]) for e in by] == sorted(pairs)
    for e in by:
        x, y = zip(*pairs[(e["benchmark"], e["method"])])
        ref = spearmanr(x, y)
        assert e["n"] == len(x) and e["rho"] == pytest.approx(ref.statistic) and e["p"] == pytest.approx(ref.pvalue)
    assert len({round(e["rho"], 6) for e in by}) > 1 and all(e["rho"] < 1 for e in by)


def test_analyze_cli_writes_outputs_and_round_trips(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", missing_records={cell_name("sft", 1, 100, 0)},
                       failed={cell_name("sft", 2, 100, 0)})
    rc = main(["analyze", str(sweep), "--bins", "10"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "ρ = 1.000" in out and "exact" in out and "quartiles" in out
    for method in LAW:  # one line per (benchmark, method)
        assert f"  phonebook · {method}: Spearman ρ = 1.000" in out
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and cell_name("sft", 1, 100, 0) in skipped[0]
    folder = sweep / "analysis"
    phase = json.loads((folder / "phase.json").read_text())
    assert phase["spearman"]["rho"] == pytest.approx(1.0) and len(phase["skipped_cells"]) == 1
    assert [(e["benchmark"], e["method"], e["rho"]) for e in phase["spearman_by"]] == [
        ("phonebook", "memft_ot", pytest.approx(1.0)), ("phonebook", "sft", pytest.approx(1.0))]
    records = pd.read_csv(folder / "records.csv")
    assert len(records) == (len(LAW) * 12 - 2) * RECORDS_PER_CELL
    assert {"cell", "method", "rank", "length", "id", "target_len", "earliest_stubborn", "first_failure",
            "exact", "certified"} <= set(records.columns)
    assert len(pd.read_csv(folder / "prob_grid.csv")) == (len(LAW) * 12 - 2) * 10
    again = read_analysis(folder)
    assert again.summary == phase and len(again.records) == len(records)
    assert load_or_analyze(sweep).summary == phase  # current analysis is reused


def test_analyze_errors(tmp_path, capsys):
    assert_one_line_error(main(["analyze", str(tmp_path)]), capsys, "results.parquet")
    names = {cell_name("sft", 1, 100, 0)}
    sweep = make_sweep(tmp_path / "all-failed", ranks=(1,), lengths=(100,), methods=("sft",), failed=names)
    assert_one_line_error(main(["analyze", str(sweep)]), capsys, "no ok cells")
    sweep = make_sweep(tmp_path / "no-records", ranks=(1,), lengths=(100,), methods=("sft",), missing_records=names)
    assert_one_line_error(main(["analyze", str(sweep)]), capsys, "no records")
