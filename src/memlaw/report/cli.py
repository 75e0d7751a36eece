"""`memlaw report`: one self-contained HTML report for a sweep folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML report of a sweep: ΔL and the fitted law, landscapes, phase transition",
        description="Reads DIR/results.parquet, the cells' records.jsonl (or DIR/analysis) and the law "
        "(default DIR/law/law.json, optional).",
    )
    p.add_argument("sweep", metavar="DIR", help="sweep folder")
    p.add_argument("--law", default=None, metavar="PATH", help="law.json from `memlaw fit` (default: DIR/law/law.json if present)")
    p.add_argument("--out", default=None, metavar="PATH", help="HTML file to write (default: DIR/report.html)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .html import build_report

    out = build_report(args.sweep, law_path=args.law, out=args.out)
    print(f"report: {out}")
    return 0
