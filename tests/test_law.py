"""The Parametric Memory Law fitter and planner on synthetic data from known parameters (no models)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from memlaw.cli import main
from memlaw.errors import MemlawError
from memlaw.law.fit import PARAMS, ParametricMemoryLaw, fit_groups, next_power_of_two
from memlaw.law.lawfile import GROUP_KEYS, LAW_FILE, entry_law, group_key, group_label, pick_group, read_law, write_law

TRUE = {"C": 2.0, "alpha": 0.5, "beta": 0.6, "b": 0.05}
RANKS = 2 ** np.arange(7)  # 1 … 64
LENGTHS = np.array([50, 100, 200, 500, 1000, 2000, 5000, 10000])
# How far a good estimate may be from the truth, per parameter.
TOLERANCE = {"C": 0.2, "alpha": 0.03, "beta": 0.03, "b": 0.01}


def law_points(seed: int = 0, seeds: int = 3, outlier_fraction: float = 0.0, C: float = TRUE["C"]):
    """Every (rank, length) pair `seeds` times; 3% multiplicative + 0.005 additive noise; optional gross outliers."""
    rng = np.random.default_rng(seed)
    rank, length = (np.tile(a.ravel(), seeds).astype(float) for a in np.meshgrid(RANKS, LENGTHS))
    clean = C * rank ** TRUE["alpha"] * length ** (-TRUE["beta"]) + TRUE["b"]
    y = clean * (1 + 0.03 * rng.standard_normal(len(clean))) + 0.005 * rng.standard_normal(len(clean))
    k = int(round(outlier_fraction * len(y)))
    bad = rng.choice(len(y), k, replace=False)
    y[bad] += rng.choice([-1.0, 1.0], k) * rng.uniform(0.5, 2.0, k) * 5 * np.median(np.abs(clean))
    return rank, length, y


def worst_error(law: ParametricMemoryLaw) -> float:
    """Largest parameter error in units of TOLERANCE (≤ 1: every parameter recovered)."""
    return max(abs(getattr(law, f"{p}_") - TRUE[p]) / TOLERANCE[p] for p in PARAMS)


@pytest.fixture(scope="module")
def fitted() -> ParametricMemoryLaw:
    return ParametricMemoryLaw(n_bootstrap=50).fit(*law_points())


# ---------------------------------------------------------------------- recovery
def test_recovers_known_parameters_within_bootstrap_intervals(fitted):
    for p in PARAMS:
        lo, hi = fitted.ci_[p]
        assert lo <= TRUE[p] <= hi, f"{p}: true {TRUE[p]} outside CI [{lo}, {hi}]"
        assert lo <= getattr(fitted, f"{p}_") <= hi
    assert worst_error(fitted) < 1
    assert fitted.r2_ > 0.98
    assert fitted.mape_ < 10
    assert fitted.n_ == len(RANKS) * len(LENGTHS) * 3
    assert fitted.bootstrap_params_.shape == (50, 4)
    assert fitted.residuals_.shape == (fitted.n_,)


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy"])
def test_robust_fit_survives_outliers_where_least_squares_does_not(loss):
    points = law_points(seed=1, outlier_fraction=0.1)
    robust = ParametricMemoryLaw(loss=loss, n_bootstrap=0).fit(*points)
    plain = ParametricMemoryLaw(loss="linear", n_bootstrap=0).fit(*points)
    assert worst_error(robust) < 1, {p: getattr(robust, f"{p}_") for p in PARAMS}
    assert worst_error(plain) > 3 * worst_error(robust)
    assert robust.ci_ == {}


def test_exponent_grid_is_only_a_start():
    """A coarse grid that misses the true exponents still refines to them."""
    law = ParametricMemoryLaw(alpha_grid=[0.0, 1.5], beta_grid=[0.0, 1.5], n_bootstrap=0).fit(*law_points())
    assert worst_error(law) < 1


# ---------------------------------------------------------------------- using a fitted law
def test_predict_score_and_dict_round_trip(fitted):
    rank, length, y = law_points(seed=7)
    assert fitted.predict(8, 1000) == pytest.approx(fitted.C_ * 8**fitted.alpha_ * 1000 ** (-fitted.beta_) + fitted.b_)
    assert fitted.score(rank, length, y) > 0.98

    restored = ParametricMemoryLaw.from_dict(json.loads(json.dumps(fitted.to_dict())))
    np.testing.assert_allclose(restored.predict(rank, length), fitted.predict(rank, length))
    np.testing.assert_array_equal(restored.bootstrap_params_, fitted.bootstrap_params_)
    assert restored.ci_ == fitted.ci_
    assert (restored.r2_, restored.mape_, restored.n_, restored.loss) == (fitted.r2_, fitted.mape_, fitted.n_, "soft_l1")
    assert restored.rank_for(1000, 0.5) == fitted.rank_for(1000, 0.5)


def test_rank_for_meets_the_target(fitted):
    target = float(fitted.predict(10, 2000))
    plan = fitted.rank_for(2000, target)
    assert plan.rank == pytest.approx(10, rel=1e-9)
    assert fitted.predict(plan.power_of_two, 2000) >= target
    assert fitted.predict(plan.rank * 0.99, 2000) < target
    assert plan.power_of_two == 16
    lo, hi = plan.interval
    assert lo <= plan.rank <= hi
    assert [next_power_of_two(r) for r in (0.3, 1, 2, 2.01, 64, 65)] == [1, 1, 2, 4, 64, 128]


def test_unreachable_targets_are_explained(fitted):
    with pytest.raises(MemlawError, match="floor b"):
        fitted.rank_for(1000, fitted.b_ / 2)
    shrinking = ParametricMemoryLaw.from_dict({"C": 1.0, "alpha": -0.2, "beta": 0.5, "b": 0.0})
    with pytest.raises(MemlawError, match="does not grow with rank"):
        shrinking.rank_for(1000, 0.1)
    assert shrinking.bootstrap_params_.shape == (0, 4)


@pytest.mark.parametrize(
    "rank, length, delta_loss, message",
    [
        ([1, 2, 4, 8], [10, 20, 40], [1, 2, 3, 4], "differ in length"),
        ([1, 2, 4], [10, 20, 40], [1, 2, 3], "at least 4 points"),
        ([0, 2, 4, 8], [10, 20, 40, 80], [1, 2, 3, 4], "rank must be positive"),
        ([1, 2, 4, 8], [10, 20, -40, 80], [1, 2, 3, 4], "length must be positive"),
        ([1, 2, 4, 8], [10, 20, 40, 80], [1, np.nan, 3, 4], "delta_loss has 1 non-finite"),
        ([1, 1, 2, 2], [10, 20, 10, 10], [1, 2, 3, 4], "4 distinct (rank, length) points, got 3"),
        ([4, 4, 4, 4], [10, 20, 30, 40], [1, 2, 3, 4], "one rank"),
        ([1, 2, 4, 8], [10, 20, 40, 80], [1, 1, 1, 1], "constant"),
    ],
)
def test_bad_points_raise_memlaw_error(rank, length, delta_loss, message):
    with pytest.raises(MemlawError, match=re.escape(message)):
        ParametricMemoryLaw(n_bootstrap=0).fit(rank, length, delta_loss)


# ---------------------------------------------------------------------- groups and law.json
def results_table() -> pd.DataFrame:
    """Two methods with different C, failed and NaN rows, and a group too small to fit."""
    frames = []
    for method, C, seed in (("sft", 1.0, 2), ("memft_ot", 3.0, 3)):
        rank, length, y = law_points(seed=seed, seeds=1, C=C)
        frames.append(pd.DataFrame({"method": method, "rank": rank.astype(int), "length": length.astype(int), "delta_loss": y}))
    frames.append(pd.DataFrame({"method": "memft_sw", "rank": [1, 2, 4], "length": [50, 50, 50], "delta_loss": [0.1, 0.2, 0.3]}))
    frames.append(pd.DataFrame({"method": "sft", "rank": [1, 2], "length": [100, 100], "delta_loss": [50.0, np.nan],
                                "status": ["failed", "ok"]}))
    table = pd.concat(frames, ignore_index=True)
    table["status"] = table["status"].fillna("ok")
    return table.assign(model="default", benchmark="phonebook", ratio=None, seed=0)


def test_fit_groups_one_law_per_method_plus_combined():
    law = fit_groups(results_table(), n_bootstrap=20)
    by_method = {g["key"]["method"]: g for g in law["groups"]}
    assert set(by_method) == {"sft", "memft_ot"}
    assert by_method["sft"]["key"] == {"model": "default", "benchmark": "phonebook", "ratio": None, "method": "sft"}
    n = len(RANKS) * len(LENGTHS)
    assert by_method["sft"]["n"] == by_method["memft_ot"]["n"] == n  # failed and NaN rows ignored
    assert by_method["sft"]["C"] == pytest.approx(1.0, rel=0.15) and by_method["memft_ot"]["C"] == pytest.approx(3.0, rel=0.15)
    for g in law["groups"]:
        assert g["r2"] > 0.98 and len(g["bootstrap"]) == 20 and set(g["ci"]) == set(PARAMS)
    assert law["combined"]["n"] == 2 * n + 3
    assert "key" not in law["combined"]
    assert [s["key"]["method"] for s in law["skipped"]] == ["memft_sw"]
    assert "distinct" in law["skipped"][0]["reason"]


def test_fit_groups_rejects_unusable_tables():
    with pytest.raises(MemlawError, match="missing column.*delta_loss"):
        fit_groups(results_table().drop(columns="delta_loss"))
    with pytest.raises(MemlawError, match="no rows with status 'ok'"):
        fit_groups(results_table().assign(status="failed"))


# ---------------------------------------------------------------------- law.json (memlaw.law.lawfile)
def test_write_law_then_read_law(tmp_path):
    law = fit_groups(results_table(), n_bootstrap=0)
    assert law["group_cols"] == list(GROUP_KEYS)
    path = write_law(tmp_path / "out", law)  # a folder: LAW_FILE inside it
    assert path == tmp_path / "out" / LAW_FILE and read_law(path) == json.loads(json.dumps(law))
    assert [p.name for p in path.parent.iterdir()] == [LAW_FILE]  # no temp files left
    assert write_law(tmp_path / "mine.json", law) == tmp_path / "mine.json"  # a .json path: the file itself
    entry = read_law(path)["groups"][0]
    assert group_key(entry) == ("default", "phonebook", None, "memft_ot")
    np.testing.assert_allclose(entry_law(entry).predict([1, 8], [100, 1000]),
                               ParametricMemoryLaw.from_dict(entry).predict([1, 8], [100, 1000]))


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "law file not found"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"groups": []}', "no 'combined'"),
        ('{"combined": {}}', "no 'groups'"),
        ('{"groups": {}, "combined": {}}', "'groups' is not a list"),
    ],
)
def test_read_law_problems_are_one_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "law.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(MemlawError, match=re.escape(message)) as e:
        read_law(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_group_label_named_for_the_cli_plain_for_the_report():
    key = ("m", "long-context", "r20", "sft")
    assert group_label(key) == "model=m,benchmark=long-context,ratio=r20,method=sft"
    assert group_label(("m", "phonebook", None, "sft")) == "model=m,benchmark=phonebook,method=sft"
    assert group_label(key, named=False) == "m · long-context · r20 · sft"
    assert group_label(key, omit={"model", "benchmark"}, named=False) == "r20 · sft"
    assert group_label((None,) * 4) == group_label(()) == "all cells"


def test_pick_group_and_entry_law_name_the_group():
    law = fit_groups(results_table(), n_bootstrap=0)
    label, entry = pick_group(law, "method=sft", "law.json")
    assert label == "model=default,benchmark=phonebook,method=sft" and entry is law["groups"][1]
    with pytest.raises(MemlawError, match="no group matches in law.json"):
        pick_group(law, "method=lora", "law.json")
    with pytest.raises(MemlawError, match=re.escape("law group model=default,benchmark=phonebook,method=sft: law entry lacks C")):
        entry_law({k: v for k, v in entry.items() if k != "C"})


# ---------------------------------------------------------------------- CLI
def user_error(rc: int, capsys, needle: str) -> None:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("memlaw: error: "), err
    assert needle in lines[0] and "Traceback" not in out + err


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "sweep" / "results.parquet"
    path.parent.mkdir()
    results_table().to_parquet(path)
    return path


def test_cli_fit_then_plan(results_file, tmp_path, capsys):
    out = tmp_path / "law"
    assert main(["fit", str(results_file.parent), "--out", str(out), "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out
    assert "method=sft" in printed and "combined" in printed and "skipped model=default,benchmark=phonebook,method=memft_sw: need at least 4" in printed
    law = json.loads((out / "law.json").read_text())
    assert law["source"] == str(results_file) and len(law["groups"]) == 2 and len(law["combined"]["bootstrap"]) == 10

    assert main(["plan", "--law", str(out / "law.json"), "--length", "1000", "--delta-loss", "0.3",
                 "--group", "method=memft_ot"]) == 0
    printed = capsys.readouterr().out
    expected = ParametricMemoryLaw.from_dict(law["groups"][0]).rank_for(1000, 0.3)
    assert "method=memft_ot" in printed and f"choose   rank {expected.power_of_two} " in printed
    assert f"{expected.rank:.4g}" in printed

    assert main(["plan", "--law", str(out / "law.json"), "--length", "1000", "--delta-loss", "0.3"]) == 0
    assert "law      combined" in capsys.readouterr().out


def test_cli_fit_reads_csv(tmp_path, capsys):
    path = tmp_path / "results.csv"
    results_table().to_csv(path, index=False)
    assert main(["fit", str(path), "--out", str(tmp_path / "law"), "--bootstrap", "0"]) == 0
    assert json.loads((tmp_path / "law" / "law.json").read_text())["combined"]["ci"] == {}
    capsys.readouterr()


def test_cli_errors_are_one_line(results_file, tmp_path, capsys):
    user_error(main(["fit", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "l")]), capsys, "not found")
    no_column = tmp_path / "no_column.csv"
    results_table().drop(columns="length").to_csv(no_column, index=False)
    user_error(main(["fit", str(no_column), "--out", str(tmp_path / "l")]), capsys, f"{no_column}: missing column(s) length")
    all_failed = tmp_path / "failed.csv"
    results_table().assign(status="failed").to_csv(all_failed, index=False)
    user_error(main(["fit", str(all_failed), "--out", str(tmp_path / "l")]), capsys, "no rows with status 'ok'")

    law = tmp_path / "law" / "law.json"
    assert main(["fit", str(results_file), "--out", str(law.parent), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    plan = ["plan", "--law", str(law), "--length", "1000", "--delta-loss"]
    user_error(main([*plan, "0.3", "--group", "method=lora"]), capsys, "groups: model=default,benchmark=phonebook,method=memft_ot;")
    user_error(main([*plan, "0.3", "--group", "benchmark=phonebook"]), capsys, "2 groups match")
    user_error(main([*plan, "0.01"]), capsys, "floor b")
    user_error(main(["plan", "--law", str(tmp_path / "none.json"), "--length", "9", "--delta-loss", "1"]), capsys, "law file not found")
