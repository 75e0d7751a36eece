"""`memlaw data`: generate benchmark data (PhoneBook, Long-Context, linear rule) as JSONL."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="generate benchmark data").add_subparsers(dest="kind", required=True, metavar="KIND")
    p = data.add_parser("phonebook", help='PhoneBook: "First Last:" -> 10 random digits')
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--length", type=int, help="total answer tokens (counted with --model's tokenizer)")
    size.add_argument("--records", type=int, help="number of records")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--model", default="default", help="model whose tokenizer counts tokens (default: default)")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_phonebook)

    p = data.add_parser("long-context", help="Long-Context: natural text with a fraction of random tokens")
    p.add_argument("--ratio", required=True, help="r0 | r20 | r40 | r60 | r80 | r100")
    p.add_argument("--length", type=int, required=True, help="target length in tokens")
    p.add_argument("--out", required=True, help="output JSONL")
    p.add_argument("--source", default=None, metavar="FILE",
                   help="natural text: a UTF-8 text file, or a reference Long-Context .jsonl (its first line's "
                        "'matching'); default: Python's own documentation text")
    p.add_argument("--text", dest="source", help=argparse.SUPPRESS)  # deprecated alias of --source
    p.add_argument("--model", default="default", help="model whose tokenizer defines tokens (default: default)")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_long_context)

    p = data.add_parser("linear-rule", help="f(x, y) = 3x + 5y + 7: disjoint training and held-out pairs")
    p.add_argument("--train", type=int, default=100, help="training pairs (default: 100)")
    p.add_argument("--heldout", type=int, default=100, help="held-out pairs (default: 100)")
    p.add_argument("--max-value", type=int, default=99, help="x and y range over 0..MAX (default: 99)")
    p.add_argument("--out-train", required=True, help="output JSONL of training pairs")
    p.add_argument("--out-heldout", required=True, help="output JSONL of held-out pairs")
    p.add_argument("--seed", type=int, default=42, help="seed (default: 42)")
    p.set_defaults(func=cmd_linear_rule)


def cmd_phonebook(args: argparse.Namespace) -> int:
    from ..io import write_jsonl
    from .benchmarks import DataSpec, generate

    rows, _ = generate(DataSpec("phonebook", length=args.length, records=args.records, seed=args.seed), args.model)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} records, {sum(r['target_len'] for r in rows)} answer tokens -> {args.out}")
    return 0


def cmd_long_context(args: argparse.Namespace) -> int:
    from ..io import write_jsonl
    from .benchmarks import DataSpec, generate

    spec = DataSpec("long-context", length=args.length, seed=args.seed, ratio=args.ratio, source=args.source)
    (row,), _ = generate(spec, args.model)
    write_jsonl(args.out, [row])
    print(f"wrote a {args.ratio} sequence ({row['noise_count']} random tokens), target length {args.length} -> {args.out}")
    return 0


def cmd_linear_rule(args: argparse.Namespace) -> int:
    from ..io import write_jsonl
    from .benchmarks import DataSpec, generate

    spec = DataSpec("linear-rule", records=args.train, heldout=args.heldout, seed=args.seed, max_value=args.max_value)
    train_rows, heldout_rows = generate(spec)
    write_jsonl(args.out_train, train_rows)
    write_jsonl(args.out_heldout, heldout_rows)
    print(f"wrote {len(train_rows)} training pairs -> {args.out_train}, {len(heldout_rows)} held-out pairs -> {args.out_heldout}")
    return 0
