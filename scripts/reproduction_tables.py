"""Print docs/reproduction.md's tables (markdown) from the committed study, with memlaw's own readers.

    .venv/bin/python scripts/reproduction_tables.py [results/smollm2-135m]

Reads phonebook/results.parquet, phonebook/law/law.json (from `memlaw fit`), phonebook/analysis/phase.json
(from `memlaw analyze`), linear-rule/results.parquet and seed43/results.parquet; prints the law per method and
form, EM per rank per method (mean over lengths) with the paper's orderings, ρ per setting, bits per parameter
per rank, the linear rule, and the seed-to-seed differences. Nothing is trained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from memlaw.law.lawfile import ci_text, group_law, read_law

METHODS = ("sft", "memft_ot", "memft_sw")


def law_table(law: dict) -> None:
    print("| method | form | n | C | α | β | b or L0 | R² | MAPE % | held out: n, MAPE % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for group in law["groups"]:
        method = group["key"].get("method")
        for form in group["laws"]:
            fitted = group_law(group, form)
            entry = group["laws"][form]
            last = "b" if form == "paper" else "L0"
            held = (group.get("holdout") or {}).get(form) or {}
            held_text = f"{held.get('n_heldout')}, {held['mape']:.2f}" if held.get("mape") is not None else "—"
            star = " *" if group.get("preferred") == form else ""
            print(f"| {method} | {form}{star} | {entry['n']} | {ci_text(entry['C'], entry['ci'].get('C'), '.4g')} | "
                  f"{ci_text(entry['alpha'], entry['ci'].get('alpha'), '.3f')} | {ci_text(entry['beta'], entry['ci'].get('beta'), '.3f')} | "
                  f"{ci_text(entry[last], entry['ci'].get(last), '.3f')} | {fitted.r2_:.4f} | {fitted.mape_:.2f} | {held_text} |")


def em_table(ok: pd.DataFrame) -> pd.DataFrame:
    per_length = ok.groupby(["method", "rank", "length"])[["exact_match", "token_accuracy"]].mean()
    em = per_length.groupby(level=["method", "rank"]).mean() * 100
    ranks = sorted(ok["rank"].unique())
    print("| method | " + " | ".join(f"r = {r}" for r in ranks) + " |")
    print("|---|" + "---|" * len(ranks))
    for m in [m for m in METHODS if m in em.index.get_level_values(0)]:
        print(f"| {m} | " + " | ".join(f"{em.loc[(m, r), 'exact_match']:.1f} ({em.loc[(m, r), 'token_accuracy']:.1f})"
                                        if (m, r) in em.index else "—" for r in ranks) + " |")
    return em


def orderings(em: pd.DataFrame) -> None:
    methods = [m for m in METHODS if m in em.index.get_level_values(0)]
    for r in sorted({r for _, r in em.index}):
        values = {m: em.loc[(m, r), "exact_match"] for m in methods if (m, r) in em.index}
        order = " ≥ ".join(sorted(values, key=lambda m: -values[m]))
        print(f"- r = {r}: {order} ({', '.join(f'{m} {v:.1f}' for m, v in values.items())})")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/smollm2-135m")
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
    print("\n### Bits per parameter per rank (largest over lengths): memorized information / loss removed in bits\n")
    loss_bits = ok["loss_bits"] if "loss_bits" in ok else ok["bits_stored"]
    with_loss = ok.assign(loss_bits_per_param=loss_bits / ok["trainable_params"])
    per_cell = with_loss.groupby(["method", "rank", "length"])[["bits_per_param", "loss_bits_per_param"]].mean()
    bits = per_cell.groupby(level=["method", "rank"]).max()
    ranks = sorted(ok["rank"].unique())
    print("| method | " + " | ".join(f"r = {r}" for r in ranks) + " |")
    print("|---|" + "---|" * len(ranks))
    for m in [m for m in METHODS if m in bits.index.get_level_values(0)]:
        print(f"| {m} | " + " | ".join(f"{bits.loc[(m, r), 'bits_per_param']:.3f} / {bits.loc[(m, r), 'loss_bits_per_param']:.3f}"
                                        if (m, r) in bits.index else "—" for r in ranks) + " |")
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
    phase = pb / "analysis" / "phase.json"
    if phase.is_file():
        summary = json.loads(phase.read_text(encoding="utf-8"))
        print("\n### ρ (earliest stubborn position vs first free-run failure)\n")
        print(f"- pooled: ρ = {summary['spearman']['rho']}, n = {summary['spearman']['n']}")
        for e in summary.get("spearman_by", []):
            print(f"- {e['benchmark']} · {e['method']}: ρ = {e['rho']}, n = {e['n']}")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
