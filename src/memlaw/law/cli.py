"""`memlaw fit` (results table -> law.json) and `memlaw plan` (law.json -> smallest rank for a target)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import MemlawError
from .lawfile import LAW_FILE, entry_law, group_key, group_label, pick_group, read_law, write_law


def register(subparsers: Any) -> None:
    """Add the `fit` and `plan` subcommands."""
    p = subparsers.add_parser(
        "fit",
        help="fit the Parametric Memory Law per group of a sweep's results; write law.json",
        description="Fits dL = C * rank^alpha * length^(-beta) + b per (model, benchmark, ratio, method) "
        "and over all rows, with a robust loss and bootstrap confidence intervals.",
    )
    p.add_argument("results", help="results.parquet or results.csv, or a sweep folder holding one")
    p.add_argument("--out", required=True, help=f"folder for {LAW_FILE} (a path ending in .json is the file itself)")
    p.add_argument("--loss", default="soft_l1", help="robust loss: soft_l1, huber, cauchy or linear (default: soft_l1)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the intervals (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.set_defaults(func=cmd_fit)

    p = subparsers.add_parser("plan", help="smallest rank the fitted law predicts reaches a loss reduction")
    p.add_argument("--law", required=True, help=f"{LAW_FILE} written by `memlaw fit`")
    p.add_argument("--length", type=int, required=True, help="answer tokens to memorize")
    p.add_argument("--delta-loss", type=float, required=True, help="target loss reduction, nats per answer token")
    p.add_argument("--group", default=None, metavar="KEY=VALUE,...", help="use this group's law (default: the combined fit)")
    p.set_defaults(func=cmd_plan)


# ---------------------------------------------------------------------- fit
def cmd_fit(args: argparse.Namespace) -> int:
    from ..sweep.results import read_results, results_path
    from .fit import fit_groups

    path = results_path(Path(args.results))
    table = read_results(path)
    try:
        law = fit_groups(table, loss=args.loss, n_bootstrap=args.bootstrap, random_state=args.seed)
    except MemlawError as e:
        raise MemlawError(f"{path}: {e}") from None
    law = {"source": str(path), **law}
    out = write_law(args.out, law)
    print_law_table(law)
    print(f"law: {out}")
    return 0


def print_law_table(law: dict) -> None:
    """One line per fitted group, then the combined fit, then the skipped groups."""
    entries = [(group_label(group_key(g)), g) for g in law["groups"]] + [("combined", law["combined"])]
    width = max(len(label) for label, _ in entries)
    header = ["n", "C", "alpha", "beta", "b"]
    print(f"{'group':<{width}}  {header[0]:>5}  " + "  ".join(f"{h:<26}" for h in header[1:]) + "  R²      MAPE %")
    for label, e in entries:
        cells = [_with_ci(e, p) for p in ("C", "alpha", "beta", "b")]
        print(f"{label:<{width}}  {e['n']:>5}  " + "  ".join(f"{c:<26}" for c in cells) + f"  {e['r2']:<6.4f}  {e['mape']:.2f}")
    for s in law["skipped"]:
        print(f"skipped {group_label(group_key(s))}: {s['reason']}")


def _with_ci(entry: dict, param: str) -> str:
    ci = entry["ci"].get(param)
    return f"{entry[param]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


# ---------------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    law = read_law(args.law)
    label, entry = ("combined", law["combined"]) if args.group is None else pick_group(law, args.group, args.law)
    plan = entry_law(entry).rank_for(args.length, args.delta_loss)
    print(f"law      {label} (n={entry['n']}, R² {entry['r2']:.4f})")
    print(f"target   ΔL ≥ {plan.delta_loss:g} nats per answer token at length {plan.length:g}")
    if plan.interval is None:
        print(f"rank     {plan.rank:.4g}")
        print(f"choose   rank {plan.power_of_two} (smallest power of two ≥ {plan.rank:.4g})")
        return 0
    lo, hi = plan.interval
    level = f"{plan.confidence:.0%}"
    print(f"rank     {plan.rank:.4g} ({level} interval {lo:.4g} – {_rank_text(hi)})")
    print(f"choose   rank {plan.power_of_two} (smallest power of two ≥ {plan.rank:.4g}; "
          f"{level} interval {_pow2_text(lo)} – {_pow2_text(hi)})")
    return 0


def _rank_text(rank: float) -> str:
    return f"{rank:.4g}" if math.isfinite(rank) else "unreachable"


def _pow2_text(rank: float) -> str:
    from .fit import next_power_of_two

    return str(next_power_of_two(rank)) if math.isfinite(rank) else "unreachable"
