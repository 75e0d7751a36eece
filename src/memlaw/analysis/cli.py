"""`memlaw analyze`: the phase-transition analysis of a sweep folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="phase-transition analysis of a sweep: earliest stubborn token vs first free-run failure",
        description="Reads DIR/results.parquet and every ok cell's records.jsonl; writes phase.json, "
        "records.csv and prob_grid.csv.",
    )
    p.add_argument("sweep", metavar="DIR", help="sweep folder (results.parquet, cells/*/records.jsonl)")
    p.add_argument("--out", default=None, help="output folder (default: DIR/analysis)")
    p.add_argument("--bins", type=int, default=20, help="relative-position bins of the probability grid (default: 20)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from .phase import analyze, format_summary, write_analysis

    analysis = analyze(args.sweep, bins=args.bins)
    for line in analysis.summary["skipped_cells"]:
        print(f"memlaw: skipped {line}", file=sys.stderr)
    paths = write_analysis(analysis, Path(args.out) if args.out else Path(args.sweep) / "analysis")
    print(format_summary(analysis.summary))
    print(f"results: {', '.join(str(p) for p in paths.values())}")
    return 0
