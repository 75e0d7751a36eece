"""Training-step throughput and peak memory on the default model.

PhoneBook of 1000 answer tokens, memory unit `mlp` at the default layer, rank 8, batch 16,
the real training loop (`memlaw.train.trainer.train_loop`) for a few epochs.

    .venv/bin/python benchmarks/train_step.py [--epochs 3] [--rank 8] [--batch-size 16] [--device auto]

Prints one JSON line: steps/s, seconds/step, peak memory (CPU: process RSS high-water
mark, and its growth during the loop over the high-water mark after a forward pass
of the base model; CUDA: torch peak allocated).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path

import torch

from memlaw.config import TrainConfig
from memlaw.data.phonebook import generate_phonebook
from memlaw.evaluate.run import initial_stats
from memlaw.io import write_jsonl
from memlaw.model.loading import load_tokenizer
from memlaw.session import new_session
from memlaw.train.trainer import train_loop


def rss_peak_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--length", type=int, default=1000, help="PhoneBook answer tokens")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pb.jsonl"
        rows = generate_phonebook(load_tokenizer(args.model), seed=42, length=args.length)
        write_jsonl(data, rows)
        cfg = TrainConfig(data=str(data), model=args.model, rank=args.rank, batch_size=args.batch_size,
                          epochs=args.epochs, device=args.device, dtype=args.dtype).validate()
        session = new_session(cfg)
        _, encoded = session.load_data()
        fwd = session.answer_forward(encoded)
        cuda = session.loaded.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        initial_stats(session, fwd)  # as `memlaw train` does; also pages the weights in
        rss_loaded = rss_peak_mib()
        state = train_loop(session, fwd, Path(tmp), progress=False)
        result = {
            "model": args.model,
            "device": session.loaded.device.type,
            "dtype": session.cfg.dtype,
            "layer": session.cfg.layer,
            "rank": args.rank,
            "records": len(rows),
            "answer_tokens": sum(r["target_len"] for r in rows),
            "batch_size": args.batch_size,
            "steps": state.steps,
            "seconds": round(state.train_seconds, 2),
            "steps_per_second": round(state.steps / state.train_seconds, 3),
            "seconds_per_step": round(state.train_seconds / state.steps, 3),
            "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        }
        if cuda:
            result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        else:
            result["peak_rss_mib"] = round(rss_peak_mib(), 1)
            result["rss_growth_in_training_loop_mib"] = round(rss_peak_mib() - rss_loaded, 1)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
