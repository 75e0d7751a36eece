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
    p.add_argument("--no-locality", action="store_true",
                   help="skip measuring what the unit changed away from the records (KL, perplexity, unrelated answers)")
    p.add_argument("--locality-data", default=None, metavar="FILE",
                   help="measure locality on your own unrelated prompts: one per line (.txt) or a \"query\" per line "
                   "(.jsonl), instead of the 32 built-in ones")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="load the base model in this dtype instead of the run's (results go to RUN/eval-<dtype>): "
                   "e.g. float32 to check that a bfloat16 run's certificate holds in full precision")
    p.set_defaults(func=cmd_eval)

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


def cmd_eval(args: argparse.Namespace) -> int:
    from .run import evaluate_run, evaluation_dir

    if args.no_locality and args.locality_data:
        raise MemlawError("--locality-data and --no-locality contradict each other")
    if args.locality_data:
        from .locality import read_locality_prompts

        read_locality_prompts(args.locality_data)  # a bad file fails before the model loads
    metrics = evaluate_run(args.run, data=args.data, out=args.out, locality=not args.no_locality, dtype=args.dtype,
                           locality_data=args.locality_data)
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


# ---------------------------------------------------------------------- ask
def cmd_ask(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..data.records import load_queries
    from ..io import write_jsonl
    from ..memory import Memory

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
    from ..model.loading import cache_dir

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
