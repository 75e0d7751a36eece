"""`memlaw eval`: evaluate a run again, on its own data or another records file; `memlaw ask`: query a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MemlawError
from ..rundir import RunDir, RunMetrics

MIN_NEW_TOKENS_TEXT = "16"  # memlaw.memory.MIN_NEW_TOKENS, without importing torch for --help


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a run: greedy recall, teacher-forced stats, certificate")
    p.add_argument("run", help="run folder written by `memlaw train`")
    p.add_argument("--data", default=None, help="records to evaluate on (default: the run's training data)")
    p.add_argument("--out", default=None, help="where to write metrics (default: RUN, or RUN/eval-<data> with --data)")
    add_locality_flags(p)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="load the base model in this dtype instead of the run's (results go to RUN/eval-<dtype>): "
                   "e.g. float32 to check that a bfloat16 run's certificate holds in full precision")
    p.set_defaults(func=cmd_eval)


def add_locality_flags(p: argparse.ArgumentParser) -> None:
    """--no-locality and --locality-data, for every command that measures locality (eval, memorize); read with
    :func:`locality_arg`."""
    p.add_argument("--no-locality", action="store_true",
                   help="skip measuring what the unit changed away from the records (KL, perplexity, unrelated answers)")
    p.add_argument("--locality-data", default=None, metavar="FILE",
                   help="measure locality on your own unrelated prompts: one per line (.txt) or a \"query\" per line "
                   "(.jsonl), instead of the 32 built-in ones")


def locality_arg(args: argparse.Namespace) -> bool | str:
    """The `locality` of train() and evaluate_run(): off (--no-locality), the user's prompts (--locality-data FILE,
    read here so that a bad file fails before any model loads) or the built-in ones (True)."""
    if args.no_locality and args.locality_data:
        raise MemlawError("--locality-data and --no-locality contradict each other")
    if args.locality_data:
        from .locality import read_locality_prompts

        read_locality_prompts(args.locality_data)
    return False if args.no_locality else (args.locality_data or True)


def cmd_eval(args: argparse.Namespace) -> int:
    from .run import evaluate_run, evaluation_dir

    metrics = evaluate_run(args.run, data=args.data, out=args.out, locality=locality_arg(args), dtype=args.dtype)
    target = evaluation_dir(args.run, args.data, args.out, args.dtype)
    print_run_metrics(metrics, target)
    print_locality(target)
    if metrics.train_exact_match is not None:
        print(f"memory EM (training data)  {metrics.train_exact_match:.4f}")
        print(f"EM on {Path(args.data).name:<19} {metrics.exact_match:.4f}  (generalization, if these records were not trained)")
    return 0


def print_locality(run: RunDir) -> None:
    """The run's locality.json, if it has one."""
    if run.locality_path.is_file():
        from .locality import Locality

        values = run.read_locality()
        values.pop("ppl_change", None)
        for line in Locality(**values).lines():
            print(line)


def print_run_metrics(metrics: RunMetrics, run: RunDir) -> None:
    """The metrics table and where the results are."""
    for line in metrics.table():
        print(line)
    print(f"results: {run.metrics_path}, {run.records_path}")
