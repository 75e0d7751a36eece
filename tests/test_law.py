"""The Parametric Memory Law fitter and planner on synthetic data from known parameters (no models)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from memlaw.cli import main
from memlaw.errors import MemlawError
from memlaw.law.fit import PARAMS, ParametricMemoryLaw, _fit_points, next_power_of_two
from memlaw.law.forms import FORMS
from memlaw.law.groups import Holdout, fit_groups, regime_counts, saturated_cells
from memlaw.law.lawfile import (
    GROUP_KEYS, LAW_FILE, default_group, group_key, group_label, group_law, pick_group, read_law, write_law,
)

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


# memft_sw's unsaturated PhoneBook cells of the committed study (results/smollm2-135m): a lattice grid
# whose bootstrap resamples can keep only points with two values of rank/length.
LATTICE = ([1, 1, 1, 1, 2, 2, 2, 4, 4], [40, 80, 160, 320, 80, 160, 320, 160, 320],
           [3.48349194, 3.00309966, 2.5552398, 2.30550156, 3.49484649, 3.06054005, 2.74017535, 3.48920858, 3.12877028])


def test_a_resample_on_a_flat_valley_is_redrawn():
    """Points with two values of rank/length fit exactly at every scale of α = β: no unique minimum."""
    r, ell = np.array([1, 1, 2, 4, 4.0]), np.array([40, 80, 80, 160, 320.0])
    y = np.where(r / ell == 1 / 40, 3.0, 2.5)
    grid = np.linspace(-1.0, 3.0, 21)
    assert _fit_points(FORMS["paper"], r, ell, y, "soft_l1", 0.1, grid, grid, unique=True) is None
    assert _fit_points(FORMS["paper"], r, ell, y, "soft_l1", 0.1, grid, grid) is not None  # the main fit still fits


def test_bootstrap_does_not_depend_on_the_last_bits():
    """Another machine rounds differently (here: ΔL × (1 ± 1e-13)); the intervals must not move (law.json is committed)."""
    r, ell, y = (np.array(v, dtype=float) for v in LATTICE)
    wobble = 1 + 1e-13 * np.random.default_rng(1).standard_normal(len(y))
    a = ParametricMemoryLaw(n_bootstrap=200, random_state=0).fit(r, ell, y)
    b = ParametricMemoryLaw(n_bootstrap=200, random_state=0).fit(r, ell, y * wobble)
    np.testing.assert_allclose(a.bootstrap_params_, b.bootstrap_params_, rtol=1e-6, atol=1e-9)


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
    growing_with_length = ParametricMemoryLaw.from_dict({"C": 1.0, "alpha": 0.3, "beta": -0.2, "b": 0.0})
    with pytest.raises(MemlawError, match="does not fall with length"):
        growing_with_length.rank_for(1000, 0.1)


def test_plan_takes_the_shipped_paper_form_only_with_the_law_s_shape(capsys):
    """The law shipped for the default model (issue 25's acceptance 4): plan plans a rank from its paper form if
    that form grows with rank and falls with length, and otherwise refuses it with the reason (the first study's
    fit had negative exponents, docs/reproduction.md)."""
    from memlaw.cli import main
    from memlaw.law.advice import default_file
    from memlaw.law.lawfile import group_law, pick_group, read_law

    path = default_file("smollm2-135m-law.json")
    _, group = pick_group(read_law(path), "method=sft", path)
    C, alpha, beta, _ = group_law(group, "paper").params_
    rc = main(["plan", "--law", str(path), "--group", "method=sft", "--form", "paper", "--length", "200",
               "--delta-loss", "2"])
    out, err = capsys.readouterr()
    if C > 0 and alpha > 0 and beta > 0:
        assert rc == 0 and "rank" in out
    else:
        assert rc == 2 and ("does not grow with rank" in err or "does not fall with length" in err)


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
    paper = {m: g["laws"]["paper"] for m, g in by_method.items()}
    assert paper["sft"]["C"] == pytest.approx(1.0, rel=0.15) and paper["memft_ot"]["C"] == pytest.approx(3.0, rel=0.15)
    for g in law["groups"]:
        assert set(g["laws"]) == {"paper", "bounded"} and g["preferred"] == "paper" and "holdout" not in g
        e = g["laws"]["paper"]
        assert e["r2"] > 0.98 and len(e["bootstrap"]) == 20 and set(e["ci"]) == set(PARAMS)
        assert set(g["laws"]["bounded"]["ci"]) == {"C", "alpha", "beta", "L0"}
    # the combined law: one per (model, benchmark), over every method's rows
    assert [c["key"] for c in law["combined"]] == [{"model": "default", "benchmark": "phonebook"}]
    assert law["combined"][0]["n"] == 2 * n + 3
    assert [s["key"]["method"] for s in law["skipped"]] == ["memft_sw"]
    assert "distinct" in law["skipped"][0]["reason"]


def test_fit_groups_by_chosen_columns_and_combined_per_model_and_benchmark():
    table = pd.concat([results_table(), results_table().assign(model="other")], ignore_index=True)
    law = fit_groups(table, ["model"], forms=["paper"], n_bootstrap=0)
    assert [g["key"] for g in law["groups"]] == [{"model": "default"}, {"model": "other"}]
    assert law["group_cols"] == ["model"] and law["forms"] == {"paper": law["forms"]["paper"]}
    assert [c["key"]["model"] for c in law["combined"]] == ["default", "other"]
    assert law["groups"][0]["laws"]["paper"]["C"] == law["combined"][0]["laws"]["paper"]["C"]  # the same rows
    with pytest.raises(MemlawError, match="--by: unknown column"):
        fit_groups(table, ["seed"])
    with pytest.raises(MemlawError, match="unknown law form"):
        fit_groups(table, forms=["cubic"])


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
    group = read_law(path)["groups"][0]
    assert group_key(group) == ("default", "phonebook", None, "memft_ot")
    for form in ("paper", "bounded"):
        np.testing.assert_allclose(group_law(group, form).predict([1, 8], [100, 1000]),
                                   ParametricMemoryLaw.from_dict(group["laws"][form]).predict([1, 8], [100, 1000]))
    assert group_law(group).form == "paper"  # the preferred form


def test_read_law_upgrades_a_version_1_file(tmp_path):
    """law.json from before the bounded form: one paper-form law per group and one combined law."""
    entry = {"n": 8, "C": 2.0, "alpha": 0.5, "beta": 0.6, "b": 0.05, "ci": {}, "r2": 0.99, "mape": 1.0}
    v1 = {"formula": "…", "group_cols": ["method"], "groups": [{"key": {"method": "sft"}, **entry}],
          "combined": entry, "skipped": []}
    (tmp_path / "law.json").write_text(json.dumps(v1))
    law = read_law(tmp_path / "law.json")
    assert law["version"] == 2 and law["groups"][0]["preferred"] == "paper" and law["excluded"] == []
    assert group_law(law["groups"][0]).predict(8, 1000) == pytest.approx(2.0 * 8**0.5 * 1000**-0.6 + 0.05)
    label, combined = default_group(law, "law.json")
    assert label == "combined all cells" and group_law(combined).b_ == 0.05


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "law file not found"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"groups": []}', "no 'combined'"),
        ('{"combined": {}}', "no 'groups'"),
        ('{"groups": {}, "combined": {}}', "'groups' is not a list"),
        ('{"version": 2, "groups": [], "combined": [{"key": {}, "laws": {"cubic": {}}}]}', "unknown law form(s) cubic"),
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


def test_pick_group_and_group_law_name_the_group():
    law = fit_groups(results_table(), n_bootstrap=0)
    label, entry = pick_group(law, "method=sft", "law.json")
    assert label == "model=default,benchmark=phonebook,method=sft" and entry is law["groups"][1]
    label, entry = pick_group(law, "model=default,benchmark=phonebook", "law.json")  # exactly the combined key
    assert label == "combined model=default,benchmark=phonebook" and entry is law["combined"][0]
    with pytest.raises(MemlawError, match="no group matches in law.json"):
        pick_group(law, "method=lora", "law.json")
    broken = {**entry, "laws": {"paper": {k: v for k, v in entry["laws"]["paper"].items() if k != "C"}}}
    with pytest.raises(MemlawError, match=re.escape("law group model=default,benchmark=phonebook (paper): law entry lacks C")):
        group_law(broken)
    with pytest.raises(MemlawError, match=re.escape("no 'cubic' law (fitted: paper, bounded)")):
        group_law(entry, "cubic")


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
    assert law["source"] == str(results_file) and len(law["groups"]) == 2
    assert len(law["combined"][0]["laws"]["bounded"]["bootstrap"]) == 10

    assert main(["plan", "--law", str(out / "law.json"), "--length", "1000", "--delta-loss", "0.3",
                 "--group", "method=memft_ot"]) == 0
    printed = capsys.readouterr().out
    expected = ParametricMemoryLaw.from_dict(law["groups"][0]["laws"]["paper"]).rank_for(1000, 0.3)
    assert "method=memft_ot, paper form" in printed and f"choose   rank {expected.power_of_two} " in printed
    assert f"{expected.rank:.4g}" in printed

    assert main(["plan", "--law", str(out / "law.json"), "--length", "1000", "--delta-loss", "0.3", "--form", "bounded"]) == 0
    printed = capsys.readouterr().out
    expected = ParametricMemoryLaw.from_dict(law["combined"][0]["laws"]["bounded"]).rank_for(1000, 0.3)
    assert "law      combined model=default,benchmark=phonebook, bounded form" in printed
    assert f"choose   rank {expected.power_of_two} " in printed


def test_cli_fit_reads_csv(tmp_path, capsys):
    path = tmp_path / "results.csv"
    results_table().to_csv(path, index=False)
    assert main(["fit", str(path), "--out", str(tmp_path / "law"), "--bootstrap", "0"]) == 0
    assert json.loads((tmp_path / "law" / "law.json").read_text())["combined"][0]["laws"]["paper"]["ci"] == {}
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
    user_error(main([*plan, "0.3", "--group", "benchmark=phonebook"]), capsys, "3 groups match")
    user_error(main([*plan, "0.01"]), capsys, "floor b")
    user_error(main(["plan", "--law", str(tmp_path / "none.json"), "--length", "9", "--delta-loss", "1"]), capsys, "law file not found")


# ---------------------------------------------------------------------- the bounded form, model choice, holdout
BOUNDED = {"C": 3.0, "alpha": 0.7, "beta": 0.5, "L0": 2.5}


def bounded_points(seed: int = 0, seeds: int = 3):
    """Every (rank, length) pair from the bounded form ΔL = L0·h/(1+h), h = C·r^α·ℓ^(−β), with 3% noise."""
    rng = np.random.default_rng(seed)
    rank, length = (np.tile(a.ravel(), seeds).astype(float) for a in np.meshgrid(RANKS, LENGTHS))
    h = BOUNDED["C"] * rank ** BOUNDED["alpha"] * length ** (-BOUNDED["beta"])
    return rank, length, BOUNDED["L0"] * h / (1 + h) * (1 + 0.03 * rng.standard_normal(len(h)))


def test_bounded_form_recovers_known_parameters_within_bootstrap_intervals():
    law = ParametricMemoryLaw(form="bounded", n_bootstrap=50).fit(*bounded_points())
    assert law.form_.params == ("C", "alpha", "beta", "L0")
    for p, true in BOUNDED.items():
        lo, hi = law.ci_[p]
        assert lo <= true <= hi, f"{p}: true {true} outside CI [{lo}, {hi}]"
    assert law.r2_ > 0.99 and not hasattr(law, "b_")
    h = law.C_ * 8**law.alpha_ * 1000 ** (-law.beta_)
    assert law.predict(8, 1000) == pytest.approx(law.L0_ * h / (1 + h))
    # the ceiling: no rank reaches L0, and the inverse meets a reachable target exactly
    with pytest.raises(MemlawError, match="ceiling L0"):
        law.rank_for(1000, law.L0_ * 1.01)
    plan = law.rank_for(1000, float(law.predict(10, 1000)))
    assert plan.rank == pytest.approx(10, rel=1e-9) and plan.interval[0] <= 10 <= plan.interval[1]
    restored = ParametricMemoryLaw.from_dict(json.loads(json.dumps(law.to_dict())))
    assert restored.form == "bounded" and restored.rank_for(1000, 1.0) == law.rank_for(1000, 1.0)
    # collapse: under the law (ΔL/(L0−ΔL))/r^α is C·ℓ^(−β) whatever the rank
    exact = law.predict([1, 4, 64], 500)
    np.testing.assert_allclose(law.collapse([1, 4, 64], exact), law.C_ * 500 ** (-law.beta_), rtol=1e-9)


def points_table(rank, length, y) -> pd.DataFrame:
    return pd.DataFrame({"model": "m", "benchmark": "phonebook", "ratio": None, "method": "sft",
                         "rank": rank.astype(int), "length": length.astype(int), "delta_loss": y, "status": "ok"})


@pytest.mark.parametrize("source, winner", [("paper", "paper"), ("bounded", "bounded")])
def test_the_form_that_made_the_data_wins_by_aic_bic_and_held_out_error(source, winner):
    points = law_points(seed=4) if source == "paper" else bounded_points(seed=4)
    law = fit_groups(points_table(*points), holdout=Holdout.parse("rank>=32"), n_bootstrap=0)
    group = law["combined"][0]
    loser = "bounded" if winner == "paper" else "paper"
    assert group["laws"][winner]["aic"] < group["laws"][loser]["aic"]
    assert group["laws"][winner]["bic"] < group["laws"][loser]["bic"]
    assert group["holdout"][winner]["mape"] < group["holdout"][loser]["mape"]
    assert group["preferred"] == winner and law["holdout"] == "rank>=32"


def test_holdout_scores_exactly_the_held_out_rows():
    rank, length, y = law_points(seed=5, seeds=1)
    table = points_table(rank, length, y)
    law = fit_groups(table, forms=["paper"], holdout=Holdout.parse("rank>=32, length<=200"), n_bootstrap=0)
    held = (rank >= 32) & (length <= 200)
    score = law["groups"][0]["holdout"]["paper"]
    assert (score["n_heldout"], score["n_train"]) == (held.sum(), (~held).sum()) == (6, len(y) - 6)
    rest = ParametricMemoryLaw(n_bootstrap=0).fit(rank[~held], length[~held], y[~held])
    pred = rest.predict(rank[held], length[held])
    assert score["mape"] == pytest.approx(100 * np.mean(np.abs(y[held] - pred) / np.abs(y[held])))
    assert score["r2"] == pytest.approx(1 - np.sum((y[held] - pred) ** 2) / np.sum((y[held] - y[held].mean()) ** 2))
    # the stored law is still fitted on every row
    assert law["groups"][0]["laws"]["paper"]["n"] == len(y)
    # max/min name the column's extremes
    np.testing.assert_array_equal(Holdout.parse("rank>=max").mask(table), rank == rank.max())
    np.testing.assert_array_equal(Holdout.parse("length==min").mask(table), length == length.min())


@pytest.mark.parametrize("text, message", [
    ("rank", "expected COLUMN OP VALUE"), ("rank>=big", "not a number, max or min"), (" , ", "empty"),
])
def test_holdout_syntax_errors(text, message):
    with pytest.raises(MemlawError, match=message):
        Holdout.parse(text)
    with pytest.raises(MemlawError, match="no column 'steps'"):
        Holdout.parse("steps>3").mask(points_table(*law_points(seeds=1)))


def test_saturation_rule_excludes_exactly_the_planted_cells():
    """Saturated: every record recalled or certified. Floor: nothing recalled and the final loss within 5% of
    the format floor. Not ΔL near the initial loss: that cell stays when not every record is recalled."""
    rank, length, y = law_points(seed=6, seeds=1)
    n = len(y)
    table = points_table(rank, length, y).assign(
        initial_loss=10.0, exact_match=0.5, certified_fraction=0.25, format_floor_loss=2.0,
        final_loss=10.0 - y, cell=[f"c{i}" for i in range(n)])
    recalled = (rank == 64) & (length == 50)
    table.loc[recalled, "exact_match"] = 1.0
    certified = (rank == 64) & (length == 100)  # every record certified (EM < 1 would be a violation: planted anyway)
    table.loc[certified, "certified_fraction"] = 1.0
    near_ceiling = (rank == 32) & (length == 50)  # ΔL at 98% of the initial loss, EM 0.875: in the regime
    table.loc[near_ceiling, ["delta_loss", "final_loss", "exact_match"]] = [9.8, 0.2, 0.875]
    floor = length == 10000
    table.loc[floor, "exact_match"] = 0.0
    table.loc[floor, "final_loss"] = 2.0 * (0.97 + 0.001 * np.log2(rank[floor]))  # within 5% of the floor 2.0
    below = length == 5000  # recalled nothing, but the loss went 10% below the floor: records partly stored
    table.loc[below, ["exact_match", "final_loss"]] = [0.0, 1.8]
    full = recalled | certified
    assert sorted(saturated_cells(table)) == sorted(np.flatnonzero(full | floor))
    law = fit_groups(table, forms=["paper"], exclude_saturated=True, n_bootstrap=0)
    assert sorted(e["cell"] for e in law["excluded"]) == sorted(table["cell"][full | floor])
    reasons = {e["cell"]: e["reason"] for e in law["excluded"]}
    assert reasons[table["cell"][recalled].item()] == "saturated: every record recalled (EM 1, certified 25%)"
    assert reasons[table["cell"][certified].item()].startswith("saturated: every record recalled (EM 0.5, certified 100%)")
    assert all(reasons[c].startswith("floor: no record recalled") and "format floor 2" in reasons[c]
               for c in table["cell"][floor])
    assert law["groups"][0]["n"] == n - (full | floor).sum() and law["saturation"] == {"excluded": True, "margin": 0.05}
    assert fit_groups(table, forms=["paper"], n_bootstrap=0)["excluded"] == []  # off by default
    with pytest.raises(MemlawError, match="needs the column"):
        fit_groups(table.drop(columns="exact_match"), exclude_saturated=True)


def test_regime_counts_cells_at_each_edge_of_the_regime():
    """Issue 25's measure of a grid: recall saturation, ΔL near its ceiling, final loss near the format floor."""
    import pandas as pd

    table = pd.DataFrame({  # initial 4, floor 2: ceiling ΔL >= 3.8, floor final >= 1.9
        "exact_match":        [1.0, 0.5, 0.9, 0.0, 0.0, 0.2],
        "certified_fraction": [1.0, 1.0, 0.8, 0.0, 0.0, 0.1],
        "initial_loss":       [4.0] * 6,
        "delta_loss":         [3.9, 3.0, 3.85, 1.95, 1.0, 2.5],
        "final_loss":         [0.1, 1.0, 0.15, 2.05, 3.0, 1.5],
        "format_floor_loss":  [2.0] * 6,
    })
    assert regime_counts(table) == {"cells": 6, "saturated": 2, "ceiling": 2, "floor": 2}
    assert regime_counts(table, margin=0.3)["floor"] == 3  # 1.5 >= 0.7 · 2
    bare = table.drop(columns=["format_floor_loss", "certified_fraction"])
    assert regime_counts(bare) == {"cells": 6, "saturated": 1, "ceiling": 2, "floor": 0}  # missing columns count none
    law = fit_groups(points_table(*law_points(seed=6, seeds=1)).assign(initial_loss=1e9), forms=["paper"], n_bootstrap=0)
    assert law["regime"]["cells"] == law["groups"][0]["n"] and law["regime"]["ceiling"] == 0


def test_saturation_floor_falls_back_to_the_flat_column_without_a_format_floor():
    """Tables written before the format floor existed: a length where nothing is recalled and ΔL is flat over ranks."""
    rank, length, y = law_points(seed=6, seeds=1)
    table = points_table(rank, length, y).assign(initial_loss=10.0, exact_match=0.5, cell=[f"c{i}" for i in range(len(y))])
    floor = length == 10000
    table.loc[floor, "exact_match"] = 0.0
    table.loc[floor, "delta_loss"] = 0.07 + 0.0005 * np.log2(rank[floor])  # 0.070 … 0.073: spread 4.2% ≤ 5%
    near = length == 5000  # recalled nothing but still grows with rank: not at the floor
    table.loc[near, "exact_match"] = 0.0
    reasons = saturated_cells(table)
    assert sorted(reasons) == sorted(np.flatnonzero(floor))
    assert all(r.startswith("floor: ") and "at length 10000" in r for r in reasons.values())


def test_fit_on_the_memorized_part_of_the_loss():
    """--target memorized_delta_loss fits the law to that column and says so in law.json."""
    rank, length, y = law_points(seed=8, seeds=1)
    table = points_table(rank, length, 0.5 * y).assign(memorized_delta_loss=y)
    plain = fit_groups(table, forms=["paper"], n_bootstrap=0)
    memorized = fit_groups(table, forms=["paper"], n_bootstrap=0, target="memorized_delta_loss")
    assert plain["target"] == "delta_loss" and memorized["target"] == "memorized_delta_loss"
    c_plain, c_mem = plain["combined"][0]["laws"]["paper"]["C"], memorized["combined"][0]["laws"]["paper"]["C"]
    assert c_mem == pytest.approx(2 * c_plain, rel=1e-3)  # y doubled: C (and b) double, the exponents stay
    with pytest.raises(MemlawError, match="missing column.*memorized_delta_loss.*re-evaluate"):
        fit_groups(table.drop(columns="memorized_delta_loss"), target="memorized_delta_loss")
    with pytest.raises(MemlawError, match="--target: unknown"):
        fit_groups(table, target="bits")


def test_cli_fit_holdout_and_saturation_flags(tmp_path, capsys):
    rank, length, y = law_points(seed=7, seeds=1)
    table = points_table(rank, length, y).assign(initial_loss=10.0, exact_match=0.5)
    table.loc[(rank == 64) & (length == 50), "exact_match"] = 1.0
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    out = tmp_path / "law.json"
    assert main(["fit", str(path), "--out", str(out), "--bootstrap", "0", "--holdout", "rank>=max",
                 "--exclude-saturated", "--by", "model,method"]) == 0
    printed = capsys.readouterr().out
    law = read_law(out)
    assert law["groups"][0]["key"] == {"model": "m", "method": "sft"} and law["holdout"] == "rank>=max"
    assert "held out (rank>=max)" in printed and "excluded 1 saturated cell(s)" in printed
    assert f"{law['groups'][0]['holdout']['paper']['mape']:.2f}" in printed
    user_error(main(["fit", str(path), "--out", str(out), "--holdout", "rank=>3"]), capsys, "--holdout: expected")
    user_error(main(["fit", str(path), "--out", str(out), "--by", "colour"]), capsys, "--by: unknown column(s) colour")


def test_only_fits_the_chosen_cells_and_records_it():
    """--only keeps the matching cells: the same law as fitting a table of just those cells."""
    rank, length, y = law_points(seed=6, seeds=1)
    table = points_table(rank, length, y)
    only = fit_groups(table, only=Holdout.parse("length<=1000", "--only"), n_bootstrap=0)
    subset = fit_groups(table[table["length"] <= 1000].reset_index(drop=True), n_bootstrap=0)
    assert only["only"] == "length<=1000" and subset["only"] is None
    assert only["combined"][0]["n"] == int((length <= 1000).sum()) == subset["combined"][0]["n"]
    assert only["combined"][0]["laws"]["paper"]["C"] == subset["combined"][0]["laws"]["paper"]["C"]
    with pytest.raises(MemlawError, match=r"--only length>1e9: no cell matches"):
        fit_groups(table, only=Holdout.parse("length>1e9", "--only"), n_bootstrap=0)
    with pytest.raises(MemlawError, match=r"--only: expected COLUMN OP VALUE"):
        Holdout.parse("length", "--only")
