"""Print docs/reproduction.md's tables (markdown) from the committed studies, with memlaw's own readers.

    .venv/bin/python scripts/reproduction_tables.py [results/smollm2-135m]            # the first study
    .venv/bin/python scripts/reproduction_tables.py --regime [results/smollm2-135m]   # the law in its regime

The first study reads phonebook/results.parquet, phonebook/law/law.json (from `memlaw fit`),
phonebook/analysis/phase.json (from `memlaw analyze`), linear-rule/results.parquet and seed43/results.parquet;
it prints the law per method and form, EM per rank per method (mean over lengths) with the paper's orderings,
ρ per setting, bits per parameter per rank, the linear rule, and the seed-to-seed differences.

--regime reads phonebook-regime/ and long-context/ (and long-context-2000/ where present): per method the
cells (EM, token accuracy, ΔL over its ceiling, final loss over the format floor), EM per rank with the
orderings, each MemFT method against sft on the same cells, how many cells sit at an edge, the laws of law/
(held-out largest rank), law-length/ (held-out longest length) and law-in-regime/ (edge cells left out),
what the cells determine (the slopes of ΔL in ln r and ln ℓ, and β/α, against the paper form's exponents),
seed noise on the same records, bits per parameter, ρ, and what 2000 epochs change against 500. A study
still running prints what it has. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from memlaw.law.lawfile import ci_text, group_law, read_law

METHODS = ("sft", "memft_ot", "memft_sw")


def law_table(law: dict) -> None:
    print("| setting | form | n | C | α | β | b or L0 | R² | MAPE % | held out: n, MAPE % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for group in law["groups"]:
        setting = " · ".join(str(group["key"][k]) for k in ("ratio", "method") if group["key"].get(k))  # Long-Context: per ratio
        for form in group["laws"]:
            fitted = group_law(group, form)
            entry = group["laws"][form]
            last = "b" if form == "paper" else "L0"
            held = (group.get("holdout") or {}).get(form) or {}
            held_text = f"{held.get('n_heldout')}, {held['mape']:.2f}" if held.get("mape") is not None else "—"
            star = " *" if group.get("preferred") == form else ""
            print(f"| {setting} | {form}{star} | {entry['n']} | {ci_text(entry['C'], entry['ci'].get('C'), '.4g')} | "
                  f"{ci_text(entry['alpha'], entry['ci'].get('alpha'), '.3f')} | {ci_text(entry['beta'], entry['ci'].get('beta'), '.3f')} | "
                  f"{ci_text(entry[last], entry['ci'].get(last), '.3f')} | {fitted.r2_:.4f} | {fitted.mape_:.2f} | {held_text} |")


def em_table(ok: pd.DataFrame) -> pd.DataFrame:
    per_length = ok.groupby(["method", "rank", "length"])[["exact_match", "token_accuracy"]].mean()
    em = per_length.groupby(level=["method", "rank"]).mean() * 100
    method_rank_table(em, sorted(ok["rank"].unique()),
                      lambda row: f"{row['exact_match']:.1f} ({row['token_accuracy']:.1f})")
    return em


def method_rank_table(table: pd.DataFrame, ranks: list, text) -> None:
    """One markdown row per method of `table` (indexed by method, rank), one column per rank: text(row) or —."""
    print("| method | " + " | ".join(f"r = {r}" for r in ranks) + " |")
    print("|---|" + "---|" * len(ranks))
    for m in [m for m in METHODS if m in table.index.get_level_values(0)]:
        print(f"| {m} | " + " | ".join(text(table.loc[(m, r)]) if (m, r) in table.index else "—" for r in ranks) + " |")


def orderings(em: pd.DataFrame) -> None:
    methods = [m for m in METHODS if m in em.index.get_level_values(0)]
    for r in sorted({r for _, r in em.index}):
        values = {m: em.loc[(m, r), "exact_match"] for m in methods if (m, r) in em.index}
        order = " ≥ ".join(sorted(values, key=lambda m: -values[m]))
        print(f"- r = {r}: {order} ({', '.join(f'{m} {v:.1f}' for m, v in values.items())})")


def first_study(root: Path) -> None:
    pb = root / "phonebook"
    results = pd.read_parquet(pb / "results.parquet")
    ok = results[results["status"] == "ok"]
    print(f"## PhoneBook: {len(ok)} ok cells of {len(results)}\n")
    law = read_law(pb / "law" / "law.json")
    print(f"### Law (`memlaw fit` options: by {law['group_cols']}, holdout {law['holdout']}, only {law.get('only')}, "
          f"saturated excluded: {law['saturation']['excluded']})\n")
    law_table(law)
    print(f"\nexcluded: {len(law['excluded'])} cells: " + "; ".join(
        f"{e['cell']} ({e['reason'].split(':')[0]})" for e in law["excluded"]))
    print("\n### EM % (token accuracy %) per rank, mean over lengths\n")
    em = em_table(ok)
    print("\norderings (EM):")
    orderings(em)
    bits_table(ok)
    loss_bits = ok["loss_bits"] if "loss_bits" in ok else ok["bits_stored"]
    if "information_bits" in ok:
        over = ok[loss_bits > ok["information_bits"]]
        print(f"\nloss_bits exceeds the records' information in {len(over)} of {len(ok)} cells")
        share = ((ok["initial_loss"] - ok["format_floor_loss"]) / ok["initial_loss"]).agg(["min", "max"])
        print(f"the format's share of the initial loss: {share['min']:.1%}–{share['max']:.1%}")
        near_ceiling = (ok["delta_loss"] >= 0.95 * ok["initial_loss"]).sum()
        near_floor = (ok["final_loss"] >= 0.95 * ok["format_floor_loss"]).sum() if "format_floor_loss" in ok else 0
        recalled = ((ok["exact_match"] >= 1) | (ok["certified_fraction"] >= 1)).sum()
        print(f"cells with every record recalled or certified: {recalled}; ΔL within 5 % of the initial loss: {near_ceiling}; "
              f"final loss within 5 % of the format floor (or above it): {near_floor}")
    rho(pb)
    lin = root / "linear-rule" / "results.parquet"
    if lin.is_file():
        d = pd.read_parquet(lin)
        d = d[d["status"] == "ok"]
        print("\n### Linear rule: memory EM % / generalization EM %\n")
        print("| method | " + " | ".join(f"r = {r}" for r in sorted(d["rank"].unique())) + " |")
        print("|---|" + "---|" * d["rank"].nunique())
        for m in [m for m in METHODS if m in set(d["method"])]:
            row = d[d["method"] == m].set_index("rank")
            print(f"| {m} | " + " | ".join(f"{row.loc[r, 'exact_match'] * 100:.1f} / {row.loc[r, 'heldout_exact_match'] * 100:.1f}"
                                           for r in sorted(d["rank"].unique())) + " |")
    seeds = root / "seed43" / "results.parquet"
    if seeds.is_file():
        s43 = pd.read_parquet(seeds)
        print("\n### Seed 42 vs seed 43 (same grid cell, other records)\n")
        print("| method | rank | length | initial loss s42 / s43 | ΔL s42 | ΔL s43 | |Δ| % | EM s42 | EM s43 |")
        print("|---|---|---|---|---|---|---|---|---|")
        diffs = []
        for row in s43[s43["status"] == "ok"].itertuples():
            base = ok[(ok["method"] == row.method) & (ok["rank"] == row.rank) & (ok["length"] == row.length)]
            if base.empty:
                continue
            b = base.iloc[0]
            diff = abs(row.delta_loss - b["delta_loss"]) / b["delta_loss"] * 100
            diffs.append(diff)
            print(f"| {row.method} | {row.rank} | {row.length} | {b['initial_loss']:.3f} / {row.initial_loss:.3f} | "
                  f"{b['delta_loss']:.3f} | {row.delta_loss:.3f} | {diff:.1f} | "
                  f"{b['exact_match']:.3f} | {row.exact_match:.3f} |")
        if diffs:
            print(f"\nmean |ΔL(s43) − ΔL(s42)| / ΔL(s42) = {sum(diffs) / len(diffs):.2f} % over {len(diffs)} cells")


def bits_table(ok: pd.DataFrame) -> None:
    print("\n### Bits per parameter per rank (largest over lengths): memorized information / loss removed in bits\n")
    loss_bits = ok["loss_bits"] if "loss_bits" in ok else ok["bits_stored"]
    with_loss = ok.assign(loss_bits_per_param=loss_bits / ok["trainable_params"])
    per_cell = with_loss.groupby(["method", "rank", "length"])[["bits_per_param", "loss_bits_per_param"]].mean()
    bits = per_cell.groupby(level=["method", "rank"]).max()
    method_rank_table(bits, sorted(ok["rank"].unique()),
                      lambda row: f"{row['bits_per_param']:.3f} / {row['loss_bits_per_param']:.3f}")


def rho(sweep: Path) -> None:
    phase = sweep / "analysis" / "phase.json"
    if phase.is_file():
        summary = json.loads(phase.read_text(encoding="utf-8"))
        print("\n### ρ (earliest stubborn position vs first free-run failure)\n")
        print(f"- pooled: ρ = {summary['spearman']['rho']:.3f}, n = {summary['spearman']['n']}")
        for e in summary.get("spearman_by", []):
            setting = " · ".join(str(e[k]) for k in ("benchmark", "ratio", "method") if e.get(k))
            print(f"- {setting}: ρ = {e['rho']:.3f}, n = {e['n']}")


# ---------------------------------------------------------------------- the law in its regime (issue 25)
def ok_cells(sweep: Path) -> pd.DataFrame:
    """The sweep's finished cells, with ΔL over its ceiling (the initial loss) and the final loss over the floor."""
    d = pd.read_csv(sweep / "results.csv")
    d = d[d["status"] == "ok"].copy()
    d["dl_rel"] = d["delta_loss"] / d["initial_loss"]
    d["floor_rel"] = d["final_loss"] / d["format_floor_loss"]
    return d


def thousands(n: float) -> str:
    return f"{int(n):,}".replace(",", " ")


def cell_table(d: pd.DataFrame, by: tuple[str, ...] = ("rank", "length")) -> None:
    """One row per (rank, length), its seeds side by side (s42 / s43)."""
    print(f"| {' | '.join(by)} | seed | EM | token accuracy | ΔL / initial | final / floor | steps |")
    print("|" + "---|" * (len(by) + 6))
    for key, c in d.groupby(list(by)):
        c = c.sort_values("seed")
        def j(col, fmt):
            return " / ".join(fmt(v) for v in c[col])
        key = key if isinstance(key, tuple) else (key,)
        print(f"| {' | '.join(thousands(k) if isinstance(k, (int, float)) else str(k) for k in key)} | "
              f"{j('seed', str)} | {j('exact_match', lambda v: f'{v:.3g}')} | {j('token_accuracy', lambda v: f'{v:.3g}')} | "
              f"{j('dl_rel', lambda v: f'{v:.3f}')} | {j('floor_rel', lambda v: f'{v:.2f}')} | {thousands(c['steps'].iloc[0])} |")


def versus_sft(d: pd.DataFrame, method: str, keys: tuple[str, ...], label: str = "") -> None:
    """`method` against sft on the cells both have: ΔL / initial and EM, cell by cell."""
    m = d[d["method"] == method].merge(d[d["method"] == "sft"], on=list(keys), suffixes=("_m", "_s"))
    if m.empty:
        return
    gain = m["dl_rel_m"] - m["dl_rel_s"]
    em = m["exact_match_m"] - m["exact_match_s"]
    print(f"- {label + ': ' if label else ''}{method} vs sft on {len(m)} matched cells: ΔL / initial higher in {int((gain > 0).sum())}, lower in "
          f"{int((gain < 0).sum())} (difference {gain.min():+.3f} … {gain.max():+.3f}, mean {gain.mean():+.3f}); "
          f"EM higher in {int((em > 0).sum())}, equal in {int((em == 0).sum())}, lower in {int((em < 0).sum())} "
          f"(mean {em.mean():+.3f})")


def edges(d: pd.DataFrame) -> None:
    """Acceptance 3's counts: saturated by recall, ΔL within 5 % of its ceiling, final loss within 5 % of the floor."""
    saturated = (d["exact_match"] >= 1) | (d["certified_fraction"] >= 1)
    ceiling = d["delta_loss"] >= 0.95 * d["initial_loss"]
    floor = d["final_loss"] >= 0.95 * d["format_floor_loss"]
    n = len(d)
    print(f"- {n} cells: {int(saturated.sum())} saturated by recall ({saturated.mean():.0%}), "
          f"{int(ceiling.sum())} with ΔL within 5 % of the initial loss ({ceiling.mean():.0%}), "
          f"{int(floor.sum())} with the final loss within 5 % of the format floor ({floor.mean():.0%}); "
          f"ΔL / initial {d['dl_rel'].min():.3f}–{d['dl_rel'].max():.3f}, final / floor "
          f"{d['floor_rel'].min():.2f}–{d['floor_rel'].max():.2f}")


def laws(sweep: Path) -> None:
    for name, what in (("law", "held out: the largest rank"), ("law-length", "held out: the longest length"),
                       ("law-in-regime", "edge cells left out; held out: the largest rank")):
        path = sweep / name / "law.json"
        if not path.is_file():
            continue
        law = read_law(path)
        print(f"\n#### {sweep.name}/{name}/law.json ({what}; by {law['group_cols']})\n")
        law_table(law)
        if law.get("excluded"):
            print(f"\nexcluded: {len(law['excluded'])} cells: " + "; ".join(
                f"{e['cell']} ({e['reason'].split(':')[0]})" for e in law["excluded"]))


def shape(d: pd.DataFrame, by: tuple[str, ...]) -> None:
    """What the cells pin down, per group: the log-linear ΔL = a + s_r·ln r + s_ℓ·ln ℓ (3 parameters) against the
    paper's 4-parameter power law, and the slopes' bootstrap intervals (200 cell resamples, seed 0, as `memlaw fit`).

    The power law tells α and β apart from C (and b) only through its curvature in ln r and ln ℓ; where the
    log-linear fit is as good, the cells fix the law's direction (the slopes' signs) and the exponents' ratio
    β/α = −s_ℓ/s_r (the rank that holds ΔL grows as ℓ^(β/α)), not the exponents themselves."""
    import numpy as np

    from memlaw.law.fit import MAX_DRAWS_PER_SAMPLE, ParametricMemoryLaw, r2_score

    print("\n### What the cells determine: slopes of ΔL in ln r and ln ℓ vs the power law's exponents\n")
    print(f"| {' · '.join(by)} | n | log-linear R² | s_r [95 % CI] | s_ℓ [95 % CI] | −s_ℓ/s_r = β/α [95 % CI] | paper form R² | paper form: refits with α > 0 and β > 0 |")
    print("|---|---|---|---|---|---|---|---|")
    for key, g in d.groupby(list(by)):
        rng = np.random.default_rng(0)  # per group, so a group's intervals do not move when another gains cells
        r, ell, y = (g[c].to_numpy(dtype=float) for c in ("rank", "length", "delta_loss"))
        X = np.column_stack([np.ones_like(r), np.log(r), np.log(ell)])
        if len(y) < 5 or np.linalg.matrix_rank(X) < 3:  # a study still running: too few cells to fit
            continue
        coef = np.linalg.lstsq(X, y, rcond=None)[0]
        r2 = r2_score(y, X @ coef)
        boots = []
        for _ in range(MAX_DRAWS_PER_SAMPLE * 200):  # a resample that cannot separate ln r from ln ℓ is redrawn, as in memlaw fit
            if len(boots) == 200:
                break
            i = rng.integers(0, len(y), len(y))
            if np.linalg.matrix_rank(X[i]) == 3:
                boots.append(np.linalg.lstsq(X[i], y[i], rcond=None)[0])
        if len(boots) < 200:  # too few resamples identify the slopes
            continue
        boots = np.array(boots)
        lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
        ratio_lo, ratio_hi = np.percentile(-boots[:, 2] / boots[:, 1], [2.5, 97.5])
        law = ParametricMemoryLaw(form="paper").fit(r, ell, y)
        both = float(np.mean((law.bootstrap_params_[:, 1] > 0) & (law.bootstrap_params_[:, 2] > 0)))
        key = key if isinstance(key, tuple) else (key,)
        print(f"| {' · '.join(map(str, key))} | {len(y)} | {r2:.4f} | {coef[1]:.3f} [{lo[1]:.3f}, {hi[1]:.3f}] | "
              f"{coef[2]:.3f} [{lo[2]:.3f}, {hi[2]:.3f}] | {-coef[2] / coef[1]:.3f} [{ratio_lo:.3f}, {ratio_hi:.3f}] | {law.r2_:.4f} | {both:.0%} |")


def seed_noise(d: pd.DataFrame, keys: tuple[str, ...]) -> None:
    """Seed 43 against seed 42 on the same records (the grid's data seed is fixed): what training noise alone moves."""
    s42, s43 = d[d["seed"] == 42], d[d["seed"] == 43]
    m = s43.merge(s42, on=[k for k in keys if k != "seed"], suffixes=("_43", "_42"))
    if m.empty:
        return
    dl = (m["delta_loss_43"] - m["delta_loss_42"]).abs() / m["delta_loss_42"] * 100
    em = (m["exact_match_43"] - m["exact_match_42"]).abs()
    print(f"- {' '.join(sorted(set(d['method'])))}: seed 43 vs 42 on the same records, {len(m)} cells: |ΔL difference| {dl.min():.2f}–{dl.max():.2f} % "
          f"(mean {dl.mean():.2f} %), |EM difference| {em.min():.3g}–{em.max():.3g} (mean {em.mean():.3g})")


def regime(root: Path) -> None:
    pb = root / "phonebook-regime"
    if (pb / "results.csv").is_file():
        d = ok_cells(pb)
        print(f"## PhoneBook in its regime: {len(d)} ok cells\n")
        keys = ("rank", "length", "seed")
        for method in [m for m in METHODS if m in set(d["method"])]:
            print(f"\n### {method}\n")
            cell_table(d[d["method"] == method])
        print("\n### EM % (token accuracy %) per rank: mean over the rank's three lengths, seed 42\n")
        orderings(em_table(d[d["seed"] == 42]))
        print("\n### Against sft, edges, seeds\n")
        for method in METHODS[1:]:
            versus_sft(d, method, keys)
        edges(d)
        for method in [m for m in METHODS if m in set(d["method"])]:
            seed_noise(d[d["method"] == method], keys)
        laws(pb)
        shape(d, ("method",))
        bits_table(d)
        rho(pb)
    lc = root / "long-context"
    if (lc / "results.csv").is_file():
        d = ok_cells(lc)
        print(f"\n## Long-Context: {len(d)} ok cells\n")
        for (ratio, method), g in d.groupby(["ratio", "method"]):
            print(f"\n### {ratio} · {method}\n")
            cell_table(g)
        print()
        for ratio, g in d.groupby("ratio"):
            versus_sft(g, "memft_ot", ("rank", "length", "seed"), label=ratio)
        edges(d)
        laws(lc)
        shape(d, ("ratio", "method"))
        rho(lc)
        long = root / "long-context-2000"
        if (long / "results.csv").is_file():
            d2 = ok_cells(long)
            m = d2.merge(d, on=["ratio", "method", "rank", "length", "seed"], suffixes=("_2000", "_500"))
            print("\n### 2000 epochs against 500 (same cells)\n")
            print("| ratio | method | rank | length | EM 500 / 2000 | ΔL / initial 500 / 2000 | final / floor 500 / 2000 |")
            print("|---|---|---|---|---|---|---|")
            for r in m.itertuples():
                print(f"| {r.ratio} | {r.method} | {r.rank} | {r.length} | {r.exact_match_500:.3g} / {r.exact_match_2000:.3g} | "
                      f"{r.dl_rel_500:.3f} / {r.dl_rel_2000:.3f} | {r.floor_rel_500:.2f} / {r.floor_rel_2000:.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="results/smollm2-135m")
    p.add_argument("--regime", action="store_true", help="the law in its regime (issue 25) instead of the first study")
    args = p.parse_args()
    (regime if args.regime else first_study)(Path(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
