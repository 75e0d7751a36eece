"""The `memlaw` command: a thin layer over the API.

Every package that has commands exposes ``register(subparsers)`` and is imported here
statically; heavy imports stay inside the command functions, so `memlaw --help` is quick.
"""

from __future__ import annotations

import argparse
import sys

from . import demo, export, memory_cli
from .analysis import cli as analysis_cli
from .data import cli as data_cli
from .errors import MemlawError, TrainingInterrupted
from .evaluate import cli as evaluate_cli
from .law import cli as law_cli
from .report import cli as report_cli
from .sweep import cli as sweep_cli
from .train import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memlaw", description="Exact parametric memory in LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_cli.register(sub)  # train
    memory_cli.register(sub)  # memorize, capacity, ask
    evaluate_cli.register(sub)  # eval
    export.register(sub)  # export
    data_cli.register(sub)  # data phonebook | long-context | linear-rule
    demo.register(sub, run=main)  # demo: runs the commands below through main
    sweep_cli.register(sub)  # sweep
    law_cli.register(sub)  # fit, plan
    analysis_cli.register(sub)  # analyze
    report_cli.register(sub)  # report
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MemlawError as e:
        print(f"memlaw: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"memlaw: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("memlaw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
