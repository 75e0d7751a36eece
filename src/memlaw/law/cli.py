"""`memlaw fit` (results table -> law.json) and `memlaw plan` (law.json -> smallest rank for a target)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..errors import MemlawError

LAW_FILE = "law.json"


def register(subparsers: Any) -> None:
    """Add the `fit` and `plan` subcommands."""
    p = subparsers.add_parser(
        "fit",
        help="fit the Parametric Memory Law per group of a sweep's results; write law.json",
        description="Fits dL = C * rank^alpha * length^(-beta) + b per (model, benchmark, ratio, method) "
        "and over all rows, with a robust loss and bootstrap confidence intervals.",
    )
    p.add_argument("results", help="results.parquet or results.csv, or a sweep folder holding one")
    p.add_argument("--out", required=True, help=f"folder for {LAW_FILE}")
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
    from ..io import write_json
    from ..sweep.results import read_results, results_path
    from .fit import fit_groups

    path = results_path(Path(args.results))
    table = read_results(path)
    try:
        law = fit_groups(table, loss=args.loss, n_bootstrap=args.bootstrap, random_state=args.seed)
    except MemlawError as e:
        raise MemlawError(f"{path}: {e}") from None
    law = {"source": str(path), **law}
    out = Path(args.out) / LAW_FILE
    write_json(out, law)
    print_law_table(law)
    print(f"law: {out}")
    return 0


def print_law_table(law: dict) -> None:
    """One line per fitted group, then the combined fit, then the skipped groups."""
    entries = [(group_label(g["key"]), g) for g in law["groups"]] + [("combined", law["combined"])]
    width = max(len(label) for label, _ in entries)
    header = ["n", "C", "alpha", "beta", "b"]
    print(f"{'group':<{width}}  {header[0]:>5}  " + "  ".join(f"{h:<26}" for h in header[1:]) + "  R²      MAPE %")
    for label, e in entries:
        cells = [_with_ci(e, p) for p in ("C", "alpha", "beta", "b")]
        print(f"{label:<{width}}  {e['n']:>5}  " + "  ".join(f"{c:<26}" for c in cells) + f"  {e['r2']:<6.4f}  {e['mape']:.2f}")
    for s in law["skipped"]:
        print(f"skipped {group_label(s['key'])}: {s['reason']}")


def _with_ci(entry: dict, param: str) -> str:
    ci = entry["ci"].get(param)
    return f"{entry[param]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


def group_label(key: dict) -> str:
    """`col=value,...` over the key's non-missing values."""
    return ",".join(f"{k}={v}" for k, v in key.items() if v is not None) or "(all)"


# ---------------------------------------------------------------------- plan
def cmd_plan(args: argparse.Namespace) -> int:
    from .fit import ParametricMemoryLaw

    law = read_law(Path(args.law))
    label, entry = ("combined", law["combined"]) if args.group is None else pick_group(law, args.group, args.law)
    plan = ParametricMemoryLaw.from_dict(entry).rank_for(args.length, args.delta_loss)
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


def read_law(path: Path) -> dict:
    """law.json as written by `memlaw fit`."""
    try:
        law = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MemlawError(f"law file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MemlawError(f"cannot read {path}: {e}") from None
    if not isinstance(law, dict) or not {"groups", "combined"} <= law.keys():
        raise MemlawError(f"{path} is not a law file from `memlaw fit` (no 'groups'/'combined')")
    return law


def pick_group(law: dict, spec: str, path: str) -> tuple[str, dict]:
    """The one group whose key matches every `key=value` of spec."""
    wanted = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MemlawError(f"--group: expected key=value,..., got {item!r}")
        wanted[key.strip()] = value.strip()
    matches = [g for g in law["groups"] if all(str(g["key"].get(k)) == v for k, v in wanted.items())]
    if len(matches) == 1:
        return group_label(matches[0]["key"]), matches[0]
    available = "; ".join(group_label(g["key"]) for g in law["groups"]) or "none"
    problem = "no group matches" if not matches else f"{len(matches)} groups match"
    raise MemlawError(f"--group {spec}: {problem} in {path}; groups: {available}")
