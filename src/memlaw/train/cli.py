"""`memlaw train`, and the flags every training command takes: one per TrainConfig field (memorize and capacity,
on the top floor, build theirs here too: memlaw.memory_cli)."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, fields

from ..config import LIST_ITEM_TYPES, TrainConfig, build_config, parse_list
from ..evaluate.cli import print_run_metrics
from ..rundir import RunDir


# ---------------------------------------------------------------------- flags from TrainConfig
def _flag_type(tp: typing.Any):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return {int: int, float: float}.get(base, str)


def rank_or_auto(text: str):
    return "auto" if text == "auto" else int(text)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (same name, dashes); defaults None so YAML/defaults apply."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if not f.metadata.get("flag", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default if not isinstance(default, list) else ','.join(map(str, default))})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in LIST_ITEM_TYPES:
            parser.add_argument(flag, default=None, metavar="A,B,...", help=help_text)
        else:
            parser.add_argument(flag, type=_flag_type(hints[f.name]), default=None, help=help_text)


def flag_values(args: argparse.Namespace) -> dict:
    """Every TrainConfig flag's value (None where not given), list flags parsed."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    for name, item in LIST_ITEM_TYPES.items():
        if overrides[name] is not None:
            overrides[name] = parse_list(overrides[name], item, name)
    return overrides


def config_from_args(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    return build_config(args.config, flag_values(args), defaults)


# ---------------------------------------------------------------------- parsers
def run_parser(subparsers, name: str, func, help_text: str, description: str | None = None,
               out_help: str | None = None) -> argparse.ArgumentParser:
    """A command that trains into a run folder: --out, --config, --overwrite and every config flag."""
    p = subparsers.add_parser(name, help=help_text, description=description)
    p.add_argument("--out", required=out_help is None, help=out_help or "run folder (config, adapter, logs, metrics)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML of flag names -> values (flags override it)")
    p.add_argument("--overwrite", action="store_true", help="replace a different finished run in --out")
    add_config_flags(p)
    p.set_defaults(func=func)
    return p


def register(subparsers) -> None:
    run_parser(subparsers, "train", cmd_train, "memorize a records file into a low-rank memory unit, then evaluate").add_argument(
        "--quiet", action="store_true", help="no progress bar"
    )


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    metrics = train(config_from_args(args), args.out, overwrite=args.overwrite, progress=not args.quiet)
    print_run_metrics(metrics, RunDir(args.out))
    return 0
