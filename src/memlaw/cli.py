"""The `memlaw` command: a thin layer over the API."""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from .config import LIST_ITEM_TYPES, TrainConfig, build_config, parse_list
from .errors import MemlawError, TrainingInterrupted

SUMMARY_KEYS = (
    "n_records",
    "target_tokens",
    "exact_match",
    "token_accuracy",
    "free_run_token_accuracy",
    "initial_loss",
    "final_loss",
    "delta_loss",
    "stubborn_tokens",
    "certified_fraction",
    "bits_stored",
    "trainable_params",
    "bits_per_param",
    "steps",
    "train_seconds",
)


# ---------------------------------------------------------------------- train flags from TrainConfig
def _flag_type(tp: typing.Any):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if args else tp
    return {int: int, float: float}.get(base, str)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (same name, dashes); defaults None so YAML/defaults apply."""
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default if not isinstance(default, list) else ','.join(map(str, default))})"
        if hints[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in LIST_ITEM_TYPES:
            parser.add_argument(flag, default=None, metavar="A,B,...", help=help_text)
        else:
            parser.add_argument(flag, type=_flag_type(hints[f.name]), default=None, help=help_text)


# `memlaw memorize`: MemFT-OT until every record is certified, within a step budget.
# No dropout: it is the reference recipe's regulariser, and here it only delays certification
# and turns off the shared-prompt and check-skipping shortcuts (docs/benchmarks.md).
MEMORIZE_DEFAULTS = {"method": "memft_ot", "stop_when": "certified", "max_steps": 2000, "epochs": 10000, "dropout": 0.0}


def config_from_args(args: argparse.Namespace, defaults: dict | None = None) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    for name, item in LIST_ITEM_TYPES.items():
        if overrides[name] is not None:
            overrides[name] = parse_list(overrides[name], item, name)
    return build_config(args.config, overrides, defaults)


# ---------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from .train.trainer import train

    cfg = config_from_args(args)
    metrics = train(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print_metrics(metrics, Path(args.out))
    return 0


def cmd_memorize(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .train.trainer import train

    cfg = config_from_args(args, MEMORIZE_DEFAULTS)

    def live(check) -> None:  # one line per certificate check, above the progress bar
        tqdm.write(
            f"epoch {check.epoch:>5}  step {check.steps:>6}  certified {check.certified}/{check.total}  "
            f"stubborn tokens {check.stubborn_tokens:>5}  loss {check.loss:.4f}",
            file=sys.stdout,
        )

    metrics = train(cfg, args.out, overwrite=args.overwrite, progress=True, on_check=live)
    print_record_table(Path(args.out) / "records.jsonl")
    print_metrics(metrics, Path(args.out))
    if metrics["certified_fraction"] == 1.0:
        print(f"all {metrics['n_records']} records certified after {metrics['steps_to_certified']} steps")
        return 0
    print(f"step budget ran out: {metrics['certified_fraction']:.1%} of records certified; adapter saved in {args.out}")
    return 1


def print_record_table(path: Path, limit: int = 50) -> None:
    import json

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    print(f"{'query':<32} {'target':<24} {'generated':<24} exact certified  min p")
    for r in rows[:limit]:
        min_p = min(r["target_probs"]) if r["target_probs"] else float("nan")
        cells = [_clip(r["query"], 32), _clip(r["target"], 24), _clip(r["generated"], 24)]
        print(f"{cells[0]:<32} {cells[1]:<24} {cells[2]:<24} {'yes' if r['exact'] else 'no':<5} "
              f"{'yes' if r['certified'] else 'no':<9} {min_p:.3f}")
    if len(rows) > limit:
        print(f"… {len(rows) - limit} more in {path}")


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


# `memlaw capacity`: probes use MemFT-OT with certified stopping within a step budget.
CAPACITY_DEFAULTS = {"method": "memft_ot", "max_steps": 300, "epochs": 10000, "data": "(generated per probe)"}


def cmd_capacity(args: argparse.Namespace) -> int:
    from .capacity import capacity_search

    cfg = config_from_args(args, CAPACITY_DEFAULTS)
    out = Path(args.out or f"runs/capacity-r{cfg.rank}")

    def show(p) -> None:
        verdict = "stored" if p.success else "FAILED"
        print(
            f"probe {p.records:>6} records ({p.answer_tokens:>6} answer tokens): {verdict:<6}  "
            f"certified {p.certified_fraction:.1%}  steps {p.steps:>5}  bits {p.bits_stored:9.1f}  {p.seconds:7.1f}s",
            flush=True,
        )

    s = capacity_search(cfg, out, benchmark=args.benchmark, start=args.start, limit=args.limit, on_probe=show)
    print(f"rank {s['rank']} ({s['method']}, budget {s['max_steps']} steps): capacity {s['records']} records, "
          f"{s['answer_tokens']} answer tokens, {s['bits_stored']:.1f} bits stored, "
          f"{s['trainable_params']} trainable params, {s['bits_per_param']:.4f} bits/param")
    print(f"results: {out / 'capacity.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate.run import evaluate_run

    out = Path(args.out) if args.out else None
    metrics = evaluate_run(args.run, data=args.data, out=out)
    where = out or (Path(args.run) if args.data is None else Path(args.run) / f"eval-{Path(args.data).stem}")
    print_metrics(metrics, where)
    if metrics.get("train_exact_match") is not None:
        print(f"memory EM (training data)  {metrics['train_exact_match']:.4f}")
        print(f"EM on {Path(args.data).name:<19} {metrics['exact_match']:.4f}  (generalisation, if these records were not trained)")
    return 0


def print_metrics(metrics: dict, where: Path) -> None:
    width = max(map(len, SUMMARY_KEYS))
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"results: {where / 'metrics.json'}, {where / 'records.jsonl'}")


def cmd_data_phonebook(args: argparse.Namespace) -> int:
    from .data.phonebook import generate_phonebook
    from .io import write_jsonl
    from .model.loading import load_tokenizer

    rows = generate_phonebook(load_tokenizer(args.model), seed=args.seed, length=args.length, records=args.records)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} records, {sum(r['target_len'] for r in rows)} answer tokens -> {args.out}")
    return 0


def cmd_data_long_context(args: argparse.Namespace) -> int:
    from .data.long_context import generate_long_context
    from .io import write_jsonl
    from .model.loading import load_tokenizer

    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MemlawError(f"cannot read --text {args.text}: {e}")
    row = generate_long_context(load_tokenizer(args.model), args.ratio, args.length, seed=args.seed, text=text)
    write_jsonl(args.out, [row])
    print(f"wrote a {args.ratio} sequence ({row['noise_count']} random tokens), target length {args.length} -> {args.out}")
    return 0


def cmd_data_linear_rule(args: argparse.Namespace) -> int:
    from .data.linear_rule import generate_linear_rule
    from .io import write_jsonl

    train_rows, heldout_rows = generate_linear_rule(args.train, args.heldout, seed=args.seed, max_value=args.max_value)
    write_jsonl(args.out_train, train_rows)
    write_jsonl(args.out_heldout, heldout_rows)
    print(f"wrote {len(train_rows)} training pairs -> {args.out_train}, {len(heldout_rows)} held-out pairs -> {args.out_heldout}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), preset=args.preset, engine=args.engine)
    return 0


# ---------------------------------------------------------------------- parser
# Packages that register further subcommands: each module has `register(subparsers)`.
COMMAND_MODULES: tuple[str, ...] = ("memlaw.sweep.cli", "memlaw.analysis.cli", "memlaw.report.cli", "memlaw.law.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memlaw", description="Exact parametric memory in LLMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_parser(name: str, func, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        """A command that trains into a run folder: --out, --config, --overwrite and every config flag."""
        p = sub.add_parser(name, help=help_text, description=description)
        p.add_argument("--out", required=True, help="run folder (config, adapter, logs, metrics)")
        p.add_argument("--config", default=None, metavar="YAML", help="YAML of flag names -> values (flags override it)")
        p.add_argument("--overwrite", action="store_true", help="replace a different finished run in --out")
        add_config_flags(p)
        p.set_defaults(func=func)
        return p

    run_parser("train", cmd_train, "memorize a records file into a low-rank memory unit, then evaluate").add_argument(
        "--quiet", action="store_true", help="no progress bar"
    )
    run_parser(
        "memorize",
        cmd_memorize,
        "memorize records until every one is certified (MemFT-OT, step budget); exit 1 if the budget runs out",
        "Defaults: --method memft_ot --stop-when certified --max-steps 2000 --dropout 0 (flags and --config override).",
    )

    p = sub.add_parser(
        "capacity",
        help="largest number of PhoneBook records a rank stores, every one certified within a step budget",
        description="Doubling then bisection over nested record sets. Defaults: --method memft_ot --max-steps 300.",
    )
    p.add_argument("--benchmark", default="phonebook", help="benchmark to probe (default: phonebook)")
    p.add_argument("--out", default=None, help="folder for the probes and capacity.json (default: runs/capacity-r<RANK>)")
    p.add_argument("--start", type=int, default=1, help="first probe size in records (default: 1)")
    p.add_argument("--limit", type=int, default=100_000, help="largest size to probe (default: 100000)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML of flag names -> values (flags override it)")
    add_config_flags(p)
    p.set_defaults(func=cmd_capacity)

    p = sub.add_parser("eval", help="evaluate a run: greedy recall, teacher-forced stats, certificate")
    p.add_argument("run", help="run folder written by `memlaw train`")
    p.add_argument("--data", default=None, help="records to evaluate on (default: the run's training data)")
    p.add_argument("--out", default=None, help="where to write metrics (default: RUN, or RUN/eval-<data> with --data)")
    p.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="generate benchmark data").add_subparsers(dest="kind", required=True, metavar="KIND")
    p = data.add_parser("phonebook", help='PhoneBook: "First Last:" -> 10 random digits')
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--length", type=int, help="total answer tokens (counted with --model's tokenizer)")
    size.add_argument("--records", type=int, help="number of records")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--model", default="default", help="model whose tokenizer counts tokens (default: default)")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_data_phonebook)

    p = data.add_parser("long-context", help="Long-Context: natural text with a fraction of random tokens")
    p.add_argument("--ratio", required=True, help="r0 | r20 | r40 | r60 | r80 | r100")
    p.add_argument("--length", type=int, required=True, help="target length in tokens")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--text", default=None, help="natural text file to use instead of the built-in source")
    p.add_argument("--model", default="default", help="model whose tokenizer defines tokens (default: default)")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_data_long_context)

    p = data.add_parser("linear-rule", help="f(x, y) = 3x + 5y + 7: disjoint training and held-out pairs")
    p.add_argument("--train", type=int, default=100, help="training pairs (default: 100)")
    p.add_argument("--heldout", type=int, default=100, help="held-out pairs (default: 100)")
    p.add_argument("--max-value", type=int, default=99, help="x and y range over 0..MAX (default: 99)")
    p.add_argument("--out-train", required=True, help="output JSONL of training pairs")
    p.add_argument("--out-heldout", required=True, help="output JSONL of held-out pairs")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_data_linear_rule)

    p = sub.add_parser(
        "demo",
        help="the law study in miniature on the default model: sweep -> fit -> analyze -> report",
        description="Runs `memlaw sweep --preset smollm2-demo`, `memlaw fit`, `memlaw analyze` and `memlaw report` "
        "into --out (resumable: finished cells are kept).",
    )
    p.add_argument("--out", default="runs/demo", help="sweep folder (default: runs/demo)")
    p.add_argument("--preset", default="smollm2-demo", help="sweep preset or grid YAML (default: smollm2-demo)")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="sweep engine (default: local)")
    p.set_defaults(func=cmd_demo)

    import importlib

    for module in COMMAND_MODULES:  # each adds its own subcommands; heavy imports stay inside its commands
        importlib.import_module(module).register(sub)
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
