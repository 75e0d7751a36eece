"""What --log-token-probs N costs: training seconds of the same run with N = 0 (off), 10 and 1.

One small default-model PhoneBook cell (32 records, rank 4, a fixed number of steps, lr 0.05,
dropout 0, sft, no certified stopping), trained with each N in turn, interleaved in rounds in
one process so machine noise hits every N alike. `train_seconds` (train_state.json) covers
the loop, so it includes the recording passes (step 0, every N steps, the last step) but
not loading the model or building the prefix cache. Reported per N: the median training
seconds, its ratio to N = 0 (the median of the per-round ratios), the rows recorded, the
seconds per recorded row, and the size of token_probs.safetensors.

    .venv/bin/python benchmarks/token_probs.py [--records 32] [--steps 60] [--rounds 3] [--every 0,10,1]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from memlaw.config import TrainConfig
from memlaw.data.phonebook import generate_phonebook
from memlaw.io import write_jsonl
from memlaw.model.loading import load_tokenizer
from memlaw.rundir import RunDir
from memlaw.train.trainer import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--records", type=int, default=32, help="PhoneBook records")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every N once per round)")
    p.add_argument("--every", default="0,10,1", help="the values of --log-token-probs; the first is the baseline")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()
    every = [int(n) for n in args.every.split(",")]

    seconds: dict[int, list[float]] = {n: [] for n in every}
    rows, size = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pb.jsonl"
        write_jsonl(data, generate_phonebook(load_tokenizer(args.model), seed=42, records=args.records))
        for r in range(args.rounds):
            for n in every:
                cfg = TrainConfig(data=str(data), model=args.model, rank=args.rank, lr=args.lr, dropout=0.0,
                                  method="sft", stop_when="never", max_steps=args.steps, epochs=10_000,
                                  device=args.device, dtype=args.dtype, log_token_probs=n).validate()
                run = RunDir(Path(tmp) / f"run-{n}")
                metrics = train(cfg, run.path, overwrite=True, progress=False)
                seconds[n].append(metrics.train_seconds)
                rows[n] = len(run.read_token_probs().steps) if n else 0
                size[n] = run.token_probs_path.stat().st_size if n else 0
                print(f"round {r + 1} N={n}: {metrics.train_seconds:.1f} s", file=sys.stderr, flush=True)

    base = every[0]
    median = {n: statistics.median(s) for n, s in seconds.items()}
    ratio = {n: statistics.median(a / b for a, b in zip(seconds[n], seconds[base])) for n in every}
    per_row = {n: (median[n] - median[base]) / rows[n] for n in every if rows[n]}
    result = {
        "model": args.model, "records": args.records, "rank": args.rank, "steps": args.steps, "rounds": args.rounds,
        "train_seconds": {n: [round(s, 2) for s in v] for n, v in seconds.items()},
        "median_seconds": {n: round(v, 2) for n, v in median.items()},
        "ratio_to_off": {n: round(v, 3) for n, v in ratio.items()},
        "rows": rows, "seconds_per_row": {n: round(v, 3) for n, v in per_row.items()},
        "file_bytes": size, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print(f"{'N':>4} {'train s (median)':>17} {'ratio':>6} {'rows':>5} {'s/row':>6} {'file bytes':>11}")
    for n in every:
        print(f"{n:>4} {median[n]:>17.2f} {ratio[n]:>6.3f} {rows[n]:>5} "
              f"{per_row.get(n, 0.0):>6.3f} {size[n]:>11}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
