"""`memlaw eval`: evaluate a run again, on its own data or another records file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..rundir import RunDir, RunMetrics


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run: greedy recall, teacher-forced stats, certificate")
    p.add_argument("run", help="run folder written by `memlaw train`")
    p.add_argument("--data", default=None, help="records to evaluate on (default: the run's training data)")
    p.add_argument("--out", default=None, help="where to write metrics (default: RUN, or RUN/eval-<data> with --data)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .run import evaluate_run, evaluation_dir

    metrics = evaluate_run(args.run, data=args.data, out=args.out)
    print_run_metrics(metrics, evaluation_dir(args.run, args.data, args.out))
    if metrics.train_exact_match is not None:
        print(f"memory EM (training data)  {metrics.train_exact_match:.4f}")
        print(f"EM on {Path(args.data).name:<19} {metrics.exact_match:.4f}  (generalization, if these records were not trained)")
    return 0


def print_run_metrics(metrics: RunMetrics, run: RunDir) -> None:
    """The metrics table and where the results are."""
    for line in metrics.table():
        print(line)
    print(f"results: {run.metrics_path}, {run.records_path}")
