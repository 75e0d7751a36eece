"""sft vs memft_ot vs memft_sw on the default model, at equal step budgets.

PhoneBook at several ranks (EM, certified fraction, steps to certified) and the linear rule
(memory EM on the trained pairs, generalization EM on held-out pairs). Every run uses
certified stopping within the same optimizer-step budget; memft_sw's curriculum gets as
many epochs as fit in that budget.

    .venv/bin/python benchmarks/methods.py --out runs/bench-methods
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

from memlaw.config import TrainConfig
from memlaw.data.linear_rule import generate_linear_rule
from memlaw.data.phonebook import generate_phonebook
from memlaw.evaluate.run import evaluate_run
from memlaw.io import atomic_write_text, write_jsonl
from memlaw.model.loading import load_tokenizer
from memlaw.train.method import METHODS, planned_steps
from memlaw.train.trainer import train


def budget_config(base: TrainConfig, n: int, budget: int) -> TrainConfig:
    """Most epochs whose planned steps fit in `budget`, with max_steps = budget."""
    epochs = max(1, budget // math.ceil(n / base.batch_size))
    cfg = dataclasses.replace(base, epochs=epochs, max_steps=budget)
    if base.method == "memft_sw":  # the curriculum trains fewer records early: more epochs fit
        while planned_steps(dataclasses.replace(cfg, epochs=epochs + 1, max_steps=None), n) <= budget:
            epochs += 1
        cfg = dataclasses.replace(cfg, epochs=epochs)
    return cfg.validate()


def run(base: TrainConfig, data: Path, n: int, budget: int, out: Path) -> dict:
    cfg = budget_config(dataclasses.replace(base, data=str(data)), n, budget)
    m = train(cfg, out, overwrite=True, progress=False)
    return {k: getattr(m, k) for k in ("exact_match", "certified_fraction", "token_accuracy", "final_loss", "steps",
                              "steps_to_certified", "train_seconds")} | {"epochs": cfg.epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-methods")
    p.add_argument("--model", default="default")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--records", type=int, default=16, help="PhoneBook records")
    p.add_argument("--ranks", default="1,2,4,8")
    p.add_argument("--budget", type=int, default=120, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--threshold-p", type=float, default=0.5, help="MemFT threshold probability")
    p.add_argument("--linear-train", type=int, default=24)
    p.add_argument("--linear-heldout", type=int, default=24)
    p.add_argument("--linear-ranks", default="2,8")
    p.add_argument("--skip-phonebook", action="store_true")
    p.add_argument("--skip-linear", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    methods = args.methods.split(",")
    base = TrainConfig(data="-", model=args.model, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout,
                       threshold_p=args.threshold_p, stop_when="certified")
    results: list[dict] = []
    results_path = out / "results.jsonl"

    def record(row: dict) -> None:
        results.append(row)
        write_jsonl(results_path, results)  # after every run: an interrupted benchmark keeps what it has
        print(json.dumps(row), flush=True)

    start = time.perf_counter()
    if not args.skip_phonebook:
        data = out / "phonebook.jsonl"
        write_jsonl(data, generate_phonebook(load_tokenizer(args.model), seed=42, records=args.records))
        for rank in map(int, args.ranks.split(",")):
            for method in methods:
                cfg = dataclasses.replace(base, rank=rank, method=method)
                row = run(cfg, data, args.records, args.budget, out / f"pb-{method}-r{rank}")
                record({"benchmark": "phonebook", "rank": rank, "method": method, **row})
    if not args.skip_linear:
        train_rows, heldout_rows = generate_linear_rule(args.linear_train, args.linear_heldout, seed=42)
        tr, ho = out / "linear_train.jsonl", out / "linear_heldout.jsonl"
        write_jsonl(tr, train_rows)
        write_jsonl(ho, heldout_rows)
        for rank in map(int, args.linear_ranks.split(",")):
            for method in methods:
                cfg = dataclasses.replace(base, rank=rank, method=method)
                run_dir = out / f"lin-{method}-r{rank}"
                row = run(cfg, tr, args.linear_train, args.budget, run_dir)
                held = evaluate_run(run_dir, data=str(ho))
                record({"benchmark": "linear_rule", "rank": rank, "method": method, **row,
                        "generalization_em": held.exact_match})
    atomic_write_text(out / "table.md", markdown(results))
    print(markdown(results))
    print(f"total {time.perf_counter() - start:.0f}s; results in {results_path}")


def markdown(rows: list[dict]) -> str:
    lines = []
    pb = [r for r in rows if r["benchmark"] == "phonebook"]
    if pb:
        lines += ["| rank | method | EM | certified | steps to certified | steps | token acc | final loss | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in pb:
            lines.append(f"| {r['rank']} | {r['method']} | {r['exact_match']:.3f} | {r['certified_fraction']:.3f} | "
                         f"{r['steps_to_certified'] if r['steps_to_certified'] is not None else '—'} | {r['steps']} | "
                         f"{r['token_accuracy']:.3f} | {r['final_loss']:.4f} | {r['train_seconds']:.0f} |")
    lin = [r for r in rows if r["benchmark"] == "linear_rule"]
    if lin:
        lines += ["", "| rank | method | memory EM | generalization EM | steps | final loss |", "|---|---|---|---|---|---|"]
        for r in lin:
            lines.append(f"| {r['rank']} | {r['method']} | {r['exact_match']:.3f} | {r['generalization_em']:.3f} | "
                         f"{r['steps']} | {r['final_loss']:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
