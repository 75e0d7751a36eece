"""Step time of a pack: K runs stepped one at a time vs in one packed step, and one run at K times the batch.

On the default model, on PhoneBook (--length answer tokens), K = 4 SFT runs of ranks 1/2/4/8 at batch B share the
base model; in interleaved rounds it times

  alone  — each run's optimizer step in turn (memlaw.train.trainer.optimizer_step) with its unit alone on the
           layer, as a sweep runs one cell at a time: K steps per tick;
  packed — the K runs' steps as one packed step (packed_step: one forward, one backward);
  wide   — one run's step at batch K·B (the same records per tick in one batch, no extra prefix rows),

and prints seconds per tick (K runs' steps, or one wide step). packed / alone is what packing buys a training
step; wide bounds it: a pack also runs one prefix row per run.

    .venv/bin/python benchmarks/pack_step.py [--length 160] [--batch-size 4] [--rounds 3] [--ticks 4] [--device auto]
        [--dropout 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from memlaw.config import TrainConfig
from memlaw.data.phonebook import generate_phonebook
from memlaw.io import write_jsonl
from memlaw.model.loading import load_model, load_tokenizer
from memlaw.rundir import RunDir
from memlaw.session import new_session
from memlaw.train.trainer import Run, TokenProbLog, packed_step

RANKS = (1, 2, 4, 8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--length", type=int, default=160, help="PhoneBook answer tokens")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ticks", type=int, default=4, help="ticks per variant per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--dropout", type=float, default=0.0, help="the units' dropout (the reference recipe's is 0.1)")
    args = p.parse_args()
    K, B = len(RANKS), args.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pb.jsonl"
        write_jsonl(data, generate_phonebook(load_tokenizer(args.model), seed=42, length=args.length))
        loaded = load_model(args.model, args.device, "auto")

        def config(rank: int, batch: int) -> TrainConfig:
            return TrainConfig(data=str(data), model=args.model, method="sft", rank=rank, lr=1e-3, epochs=1000,
                               batch_size=batch, dropout=args.dropout, device=args.device).validate()

        sessions = [new_session(config(r, B), loaded, pack=True) for r in RANKS]
        records, encoded = sessions[0].load_data()
        if len(encoded) < K * B:
            raise SystemExit(f"--length {args.length} gives {len(encoded)} records; a wide step needs {K * B}")
        forward = sessions[0].answer_forward(encoded)
        runs = [Run(s, forward, RunDir(Path(tmp) / f"run{k}"), TokenProbLog(s, forward, RunDir(Path(tmp) / f"run{k}"),
                                                                             [r.id for r in records], []), progress=False)
                for k, s in enumerate(sessions)]
        wide = runs[-1]
        wide_groups = [list(range(K * B))]
        groups = [list(range(i * B, (i + 1) * B)) for i in range(K)]
        for run in runs:
            run.epoch_stubborn, run.epoch = 0, 0
            run.session.adapter.set_training(True)
        sync = torch.cuda.synchronize if loaded.device.type == "cuda" else (lambda: None)

        @contextmanager
        def only(run: Run):
            """The layer holds this run's unit alone for the step, as in a sweep that runs one cell at a time."""
            hosts = run.session.adapter.hosts
            kept = {path: host.units for path, host in hosts.items()}
            for path, host in hosts.items():
                host.units = torch.nn.ModuleList([run.session.adapter.units[path]])
            try:
                yield
            finally:
                for path, host in hosts.items():
                    host.units = kept[path]

        def alone() -> None:
            for g in groups:
                for run in runs:
                    with only(run):
                        run.step([g])

        def packed() -> None:
            for g in groups:
                for run in runs:
                    run.session.adapter.set_training(True)
                packed_step([(run, [g]) for run in runs], forward)

        def wide_step() -> None:
            with only(wide):
                for _ in groups:
                    wide.step(wide_groups)

        variants = {"alone": alone, "packed": packed, "wide": wide_step}
        for f in variants.values():  # warm-up
            f()
        seconds: dict[str, list[float]] = {n: [] for n in variants}
        for round_ in range(args.rounds):
            for name, f in (variants.items() if round_ % 2 == 0 else reversed(variants.items())):
                for _ in range(args.ticks // len(groups) or 1):
                    sync()
                    t = time.perf_counter()
                    f()
                    sync()
                    seconds[name].append((time.perf_counter() - t) / len(groups))
    per_tick = {n: round(statistics.median(v), 4) for n, v in seconds.items()}
    result = {"model": args.model, "device": loaded.device.type, "dtype": str(loaded.dtype).replace("torch.", ""),
              "runs": K, "batch_size": B, "dropout": args.dropout, "records": len(encoded), "rounds": args.rounds,
              "seconds_per_tick": per_tick, "packed_over_alone": round(per_tick["alone"] / per_tick["packed"], 2),
              "wide_over_alone": round(per_tick["alone"] / per_tick["wide"], 2), "torch_threads": torch.get_num_threads()}
    print(f"{'variant':<8} {'s / tick':>9}")
    for name, v in per_tick.items():
        print(f"{name:<8} {v:>9.4f}")
    print(f"packed: {result['packed_over_alone']}x alone's speed; wide: {result['wide_over_alone']}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
