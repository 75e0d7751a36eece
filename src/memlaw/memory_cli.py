"""`memlaw memorize`, `memlaw ask` and `memlaw capacity`: the practitioner's commands, on the top floor.

They stand on memory.py (a memorized run as an object) and capacity.py, which themselves use train/
and evaluate/, so they live above all of them: nothing below memory.py imports it (tests/test_imports.py).
The flags come from TrainConfig through memlaw.train.cli.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import CAPACITY_DEFAULTS, MEMORIZE_DEFAULTS
from .errors import MemlawError
from .evaluate.cli import MIN_NEW_TOKENS_TEXT, add_locality_flags, locality_arg, print_locality, print_run_metrics
from .rundir import RunDir
from .train.cli import add_config_flags, config_from_args, flag_values, rank_or_auto, run_parser


def register(subparsers) -> None:
    p = run_parser(
        subparsers,
        "memorize",
        cmd_memorize,
        "memorize records until every one is certified (SFT, step budget); exit 1 if the budget runs out",
        "Defaults: --method sft --stop-when certified --max-steps 2000 --dropout 0 --preserve-gate 0.5 (flags and "
        "--config override; the gate lets the unit write only at its records' positions, so other inputs keep the "
        "base model's answers: docs/benchmarks.md, \"Locality\"; --preserve-gate 0 gives the paper's unit). "
        "With --into RUN: add the --data records to RUN's memory and train from its adapter until old and new "
        "records are all certified.",
        out_help="run folder (config, adapter, logs, metrics); with --into: where the grown memory goes "
        "(default: RUN itself, replaced once training has finished)",
    )
    rank = next(a for a in p._actions if a.dest == "rank")
    rank.type, rank.metavar = rank_or_auto, "R|auto"
    rank.help = "rank of the memory unit, or auto: the smallest rank that stores --data, from --law or a quick probe (see plan --data)"
    p.add_argument("--law", default=None, help="--rank auto: the law.json to plan with (default for the default model: the shipped study law)")
    add_locality_flags(p)
    p.add_argument("--into", default=None, metavar="RUN", help="add the --data records to this memorized run")
    p.add_argument("--replace", action="store_true", help="--into: a record whose query RUN holds replaces its target")

    p = subparsers.add_parser(
        "capacity",
        help="largest number of PhoneBook records a rank stores, every one certified within a step budget",
        description="Doubling then bisection over nested record sets. Defaults: --method memft_ot --max-steps 300.",
    )
    p.add_argument("--benchmark", default="phonebook", help="benchmark to probe (default: phonebook)")
    p.add_argument("--out", default=None, help="folder for the probes and capacity.json (default: runs/capacity-r<RANK>)")
    p.add_argument("--start", type=int, default=1, help="first probe size in records (default: 1)")
    p.add_argument("--limit", type=int, default=100_000, help="largest size to probe (default: 100000)")
    p.add_argument("--fit", nargs="+", default=None, metavar="DIR",
                   help="instead of searching: join the capacity.json of these searches (one rank each, same settings) "
                   "into one capacity file with its law K(r) = k·r^a in bits, written to --out (e.g. the file "
                   "`memlaw plan --data` reads for the default model)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML of flag names -> values (flags override it)")
    add_config_flags(p)
    p.set_defaults(func=cmd_capacity)

    p = subparsers.add_parser(
        "ask", help="ask a memorized run: its greedy answer, each token's probability, the record's certificate",
        description="The base model with the run's adapter answers greedily, with the prompt training used. Without "
        "a QUERY (and without --data) it asks interactively (readline history).")
    p.add_argument("run", help="run folder written by `memlaw train` or `memlaw memorize`")
    p.add_argument("query", nargs="?", default=None, help="the question (e.g. a record's query)")
    p.add_argument("--data", default=None, metavar="FILE", help="answer every \"query\" of this JSONL file")
    p.add_argument("--out", default=None, metavar="FILE", help="--data: write the answers here as JSONL (default: stdout)")
    p.add_argument("--record", action="store_true", help="the query must be one of the run's records (exit 2 if not)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"answer length limit (default: the run's longest answer and its end of turn, at least {MIN_NEW_TOKENS_TEXT})")
    p.set_defaults(func=cmd_ask)


# ---------------------------------------------------------------------- memorize, capacity
def cmd_memorize(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .train.trainer import train

    def live(check) -> None:  # one line per certificate check, above the progress bar
        tqdm.write(
            f"epoch {check.epoch:>5}  step {check.steps:>6}  certified {check.certified}/{check.total}  "
            f"stubborn tokens {check.stubborn_tokens:>5}  loss {check.loss:.4f}",
            file=sys.stdout,
        )

    locality = locality_arg(args)  # a bad --locality-data file fails before any training
    if args.into is not None:
        if args.rank == "auto" or args.law is not None:
            raise MemlawError("--into keeps the run's rank: --rank auto and --law do not apply")
        return memorize_into(args, live, locality)
    if args.law is not None and args.rank != "auto":
        raise MemlawError("--law goes with --rank auto")
    if args.rank == "auto":
        args.rank = auto_rank(args)
    if args.replace:
        raise MemlawError("--replace goes with --into RUN")
    if args.out is None:
        raise MemlawError("memorize: --out DIR is required (or --into RUN to add to a memorized run)")
    cfg = config_from_args(args, MEMORIZE_DEFAULTS)

    metrics = train(cfg, args.out, overwrite=args.overwrite, progress=True, on_check=live, locality=locality)
    run = RunDir(args.out)
    print_record_table(run)
    print_run_metrics(metrics, run)
    print_locality(run)
    print_gate(run)
    if metrics.certified_fraction == 1.0:
        print(f"all {metrics.n_records} records certified after {metrics.steps_to_certified} steps")
        return 0
    print(f"step budget ran out: {metrics.certified_fraction:.1%} of records certified; adapter saved in {args.out}")
    return 1


def auto_rank(args: argparse.Namespace) -> int:
    """--rank auto: plan for --data (memlaw plan --data) and say what was chosen and why."""
    from .law.cli import plan_for_data

    cfg = config_from_args(argparse.Namespace(**{**vars(args), "rank": None}), MEMORIZE_DEFAULTS)
    if not cfg.data:
        raise MemlawError("--rank auto needs --data FILE to plan for")
    advice, _ = plan_for_data(cfg.data, cfg.model, args.law, None, None, cfg.chat_template, method=cfg.method)
    print(f"rank auto: rank {advice.rank} ({advice.source})", flush=True)
    return advice.rank


def memorize_into(args: argparse.Namespace, live, locality: bool | str) -> int:
    """`memorize --into RUN --data NEW`: grow a memory without losing what it held."""
    from .memory import Memory

    if args.data is None:
        raise MemlawError("--into RUN needs --data FILE: the records to add")
    if args.config is not None or args.overwrite:
        raise MemlawError("--into RUN takes the run's own settings: --config and --overwrite do not apply")
    overrides = {k: v for k, v in flag_values(args).items() if v is not None and k != "data"}
    memory = Memory.load(args.into)
    before = len(memory.records)
    report = memory.add(args.data, replace=args.replace, out=args.out, progress=True, on_check=live,
                        locality=locality, **overrides)
    if report.new == 0:
        print(f"nothing to add: every record of {args.data} is already in {args.into} with the same target")
        return 0 if report.all_certified else 1
    print_record_table(RunDir(report.saved_to))
    for line in report.lines():
        print(line)
    print_locality(RunDir(report.saved_to))
    print_gate(RunDir(report.saved_to))
    if report.all_certified:
        print(f"memory: {memory.path} ({before} -> {len(memory.records)} records); all certified")
        return 0
    kept = f"{args.into} is unchanged; the attempt is in {report.saved_to}" if report.saved_to != memory.path else \
        f"the adapter is saved in {memory.path}"
    print(f"step budget ran out: {report.new_certified}/{report.new} new records certified, "
          f"{len(report.old_lost)} old records lost; {kept} (--max-steps N trains longer)")
    return 1


def print_gate(run: RunDir) -> None:
    """A gated unit (--preserve-gate): whether its key told the records' positions from ordinary inputs."""
    state = run.read_state()
    if "gate_leaks" not in state:
        return
    if state["gate_leaks"] == 0:
        print(f"gate: the unit writes only where its key fires: at the records' positions, at none of the replayed "
              f"general inputs (margin {state['gate_margin']:.2f} of the records' score spread)")
    else:
        print(f"gate: the records' positions are not apart from ordinary inputs: {state['gate_leaks']} replayed "
              "positions fire too, and the unit writes there (see the locality lines)")


def print_record_table(run: RunDir, limit: int = 50) -> None:
    rows = run.read_records()
    print(f"{'query':<32} {'target':<24} {'generated':<24} exact certified  min p")
    for r in rows[:limit]:
        min_p = min(r["target_probs"]) if r["target_probs"] else float("nan")
        cells = [_clip(r["query"], 32), _clip(r["target"], 24), _clip(r["generated"], 24)]
        print(f"{cells[0]:<32} {cells[1]:<24} {cells[2]:<24} {'yes' if r['exact'] else 'no':<5} "
              f"{'yes' if r['certified'] else 'no':<9} {min_p:.3f}")
    if len(rows) > limit:
        print(f"… {len(rows) - limit} more in {run.records_path}")


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_capacity(args: argparse.Namespace) -> int:
    from .capacity import capacity_search

    if args.fit is not None:
        return fit_capacity(args)

    cfg = config_from_args(args, CAPACITY_DEFAULTS)
    out = Path(args.out or f"runs/capacity-r{cfg.rank}")

    def show(p) -> None:
        verdict = "stored" if p.success else "FAILED"
        print(
            f"probe {p.records:>6} records ({p.answer_tokens:>6} answer tokens): {verdict:<6}  "
            f"certified {p.certified_fraction:.1%}  steps {p.steps:>5}  bits memorized {p.bits_memorized:7.1f}  {p.seconds:7.1f}s",
            flush=True,
        )

    s = capacity_search(cfg, out, benchmark=args.benchmark, start=args.start, limit=args.limit, on_probe=show)
    print(f"rank {s['rank']} ({s['protocol']['text']}): capacity {s['records']} records, "
          f"{s['answer_tokens']} answer tokens, {s['bits_memorized']:.1f} bits memorized, "
          f"{s['trainable_params']} trainable params, {s['bits_per_param']:.4f} bits/param")
    print(f"results: {out / 'capacity.json'}")
    return 0


def fit_capacity(args: argparse.Namespace) -> int:
    """`memlaw capacity --fit DIR ... --out FILE`: one capacity file with its law, from several searches."""
    from .law.capacity import fit_capacity_files

    if args.out is None:
        raise MemlawError("capacity --fit: give --out FILE for the joined capacity file")
    result = fit_capacity_files(args.fit, args.out)
    law = result["law"]
    for rank, entry in result["ranks"].items():
        print(f"rank {rank:>4}: {entry['records']:>5} records, {entry['bits_memorized']:8.1f} bits, "
              f"{entry['bits_per_param']:.4f} bits/param")
    print(f"law      K(r) = {law['k']:.4g}·r^{law['a']:.3f} bits")
    if law["heldout"]:
        h = law["heldout"]
        print(f"held out rank {h['rank']:g}: predicted {h['predicted_bits']:.1f} bits, measured {h['measured_bits']:.1f} "
              f"({h['error']:+.1%})")
    print(f"capacity: {args.out}")
    return 0


# ---------------------------------------------------------------------- ask
def cmd_ask(args: argparse.Namespace) -> int:
    import json

    from .data.records import load_queries
    from .io import write_jsonl
    from .memory import Memory

    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise MemlawError(f"--max-new-tokens: must be a positive integer, got {args.max_new_tokens}")
    if args.query is not None and args.data is not None:
        raise MemlawError("ask: give a QUERY or --data FILE, not both")
    if args.out is not None and args.data is None:
        raise MemlawError("ask: --out goes with --data")
    queries = load_queries(args.data) if args.data else None
    memory = Memory.load(args.run)

    def check(query: str) -> None:
        if args.record and query not in memory.records:
            raise MemlawError(f"{query!r} is not a query of the run {args.run} ({len(memory.records)} records, "
                              f"in {RunDir(args.run).records_path})")

    if queries is not None:
        for q in queries:
            check(q["query"])
        answers = memory.ask_many([q["query"] for q in queries], args.max_new_tokens)
        rows = [{**{k: v for k, v in q.items() if k != "query"}, **a.to_dict()} for q, a in zip(queries, answers)]
        if args.out:
            write_jsonl(args.out, rows)
            known = [a for a in answers if a.record is not None]
            print(f"{len(rows)} answers: {args.out} ({len(known)} of the run's records, "
                  f"{sum(bool(a.matches_target) for a in known)} of them answered with their target)")
        else:
            for row in rows:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    if args.query is not None:
        check(args.query)
        print_answer(memory.ask(args.query, args.max_new_tokens))
        return 0
    return interactive(memory, args)


def print_answer(answer) -> None:
    """The answer, its tokens with their probabilities, and what the run knows about the query."""
    end = "the model ended its turn" if answer.ended else "cut at the token limit"
    print(f"answer: {answer.text}    ({len(answer.token_ids)} tokens, {end})")
    if answer.tokens:
        print("  " + "  ".join(f"{t!r}:{p:.3f}" for t, p in zip(answer.tokens, answer.probs)))
    if answer.record is None:
        print("not one of the run's records (nothing to check it against)")
        return
    r = answer.record
    print(f"record {r.get('id')}: target {r['target']!r}; answer matches: {'yes' if answer.matches_target else 'NO'}; "
          f"certified: {'yes' if answer.certified else 'no'} (every target token p > 0.5 when the run was evaluated)")


def interactive(memory, args: argparse.Namespace) -> int:
    """A question per line until an empty line, 'quit' or end of input; history in the memlaw cache."""
    try:
        import readline
    except ImportError:  # not on every platform
        readline = None
    from .model.loading import cache_dir

    history = cache_dir() / "ask_history"
    if readline is not None:
        try:
            readline.read_history_file(history)
        except OSError:
            pass
    print(f"asking {args.run} ({len(memory.records)} records); an empty line or 'quit' ends")
    try:
        while True:
            try:
                query = input("ask> ")
            except EOFError:
                print()
                break
            if not query.strip() or query.strip() == "quit":
                break
            if args.record and query not in memory.records:
                print(f"{query!r} is not a query of the run")
                continue
            print_answer(memory.ask(query, args.max_new_tokens))
    finally:
        if readline is not None:
            try:
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(history)
            except OSError:
                pass
    return 0
