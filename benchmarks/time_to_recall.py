"""Wall time until every record is recalled: memlaw's protocol against the reference protocol.

Same PhoneBook, model, layer, rank, learning rate, batch size and seed for all protocols:

  reference     — sft for a fixed 200 epochs, no prefix cache (the paper's method and epoch count;
                  lr and dropout are this benchmark's, 0.05 and 0 by default, not the paper's 1e-2 and 0.1);
  sft-certified — sft with certified stopping and the prefix cache, at most the same 200 epochs;
  memlaw        — memft_ot with certified stopping (checked after each epoch whose training pass
                  met no stubborn token) and the prefix cache, at most the same 200 epochs.

When the protocols run in another dtype than float32 (--dtype auto on a GPU or on a CPU where
bfloat16 is faster, or --dtype bfloat16), the reference protocol runs in float32 too
(`reference-float32`: what a user of transformers gets by default on a CPU), and the speed-ups
are given against both references.

The speed-up is split into its sources: the prefix cache (time per step, reference against
sft-certified), certified stopping (steps, reference against sft-certified) and the method
(sft-certified against memlaw). Each protocol runs in its own child process (so each has its
own peak memory), one after the other. Reported: training wall time (the reference's 200
epochs; the others' time to the certificate, cache build included), the whole `memlaw train`
wall time, EM, certified fraction, steps, and peak memory.

    .venv/bin/python benchmarks/time_to_recall.py [--records 16] [--rank 8] [--threshold-p 0.5] [--lr 0.05] [--dropout 0] [--seed 42]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROTOCOLS = {
    "reference": {"method": "sft", "stop_when": "never", "prefix_cache": False},
    "reference-float32": {"method": "sft", "stop_when": "never", "prefix_cache": False},  # only beside another dtype
    "sft-certified": {"method": "sft", "stop_when": "certified", "prefix_cache": True},
    "memlaw": {"method": "memft_ot", "stop_when": "certified", "prefix_cache": True},
}


def run_one(args, name: str) -> dict:
    """Train with one protocol in this process; return its measurements."""
    import torch

    from memlaw.config import TrainConfig
    from memlaw.data.phonebook import generate_phonebook
    from memlaw.io import write_jsonl
    from memlaw.model.loading import load_tokenizer
    from memlaw.rundir import RunDir
    from memlaw.train.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pb.jsonl"
        write_jsonl(data, generate_phonebook(load_tokenizer(args.model), seed=args.seed, records=args.records))
        dtype = "float32" if name == "reference-float32" else args.dtype
        cfg = TrainConfig(data=str(data), model=args.model, rank=args.rank, lr=args.lr, dropout=args.dropout,
                          epochs=args.epochs, batch_size=args.batch_size, device=args.device, dtype=dtype, seed=args.seed,
                          **PROTOCOLS[name], **({"threshold_p": args.threshold_p} if name == "memlaw" else {})).validate()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = train(cfg, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - start
        ran = RunDir(Path(tmp) / "run").read_config().dtype
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    certified = PROTOCOLS[name]["stop_when"] == "certified" and metrics.seconds_to_certified
    seconds = metrics.seconds_to_certified if certified else metrics.train_seconds
    result = {
        "protocol": name, **PROTOCOLS[name], "dtype": ran, "steps": metrics.steps, "stopped": metrics.stopped,
        "training_seconds": round(seconds, 1), "train_command_seconds": round(wall, 1),
        "exact_match": metrics.exact_match, "certified_fraction": metrics.certified_fraction,
        "final_loss": round(metrics.final_loss, 4), "peak_rss_mib": round(peak, 1),
    }
    if torch.cuda.is_available():
        result["peak_cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--records", type=int, default=16, help="PhoneBook records")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threshold-p", type=float, default=0.5, help="memlaw protocol: MemFT-OT's threshold probability")
    p.add_argument("--seed", type=int, default=42, help="data and training seed (both protocols)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--protocols", default=",".join(PROTOCOLS),
                   help="comma-separated subset to run (default: all; the speed-ups need the other three; "
                   "reference-float32 runs only where they ran in another dtype)")
    p.add_argument("--only", choices=sorted(PROTOCOLS), help=argparse.SUPPRESS)  # child process
    args = p.parse_args()

    if args.only:
        print(json.dumps(run_one(args, args.only)))
        return
    chosen = [n.strip() for n in args.protocols.split(",") if n.strip()]
    if not chosen or any(n not in PROTOCOLS for n in chosen):
        sys.exit(f"--protocols: choose from {', '.join(PROTOCOLS)}")
    results = {}
    for name in chosen:
        if name == "reference-float32" and results and all(r["dtype"] == "float32" for r in results.values()):
            continue  # the protocols ran in float32: the reference is that already
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name],
                               capture_output=True, text=True, check=False)
        if child.returncode != 0:
            sys.exit(f"{name} failed:\n{child.stderr}")
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
    main_three = {"reference", "sft-certified", "memlaw"}
    if not main_three <= set(results):  # a subset: the table only
        for r in results.values():
            print(json.dumps(r))
        return
    ref, sft, ours = results["reference"], results["sft-certified"], results["memlaw"]
    per_step = lambda r: r["training_seconds"] / r["steps"]  # noqa: E731
    summary = {
        "records": args.records, "rank": args.rank, "seed": args.seed, "threshold_p": args.threshold_p, "lr": args.lr, "dropout": args.dropout, "epochs": args.epochs,
        "batch_size": args.batch_size, "speedup_training": round(ref["training_seconds"] / ours["training_seconds"], 2),
        "speedup_train_command": round(ref["train_command_seconds"] / ours["train_command_seconds"], 2),
        # the product of the three is speedup_training
        "from_cache": round(per_step(ref) / per_step(sft), 2),
        "from_certified_stopping": round(ref["steps"] / sft["steps"], 2),
        "from_method": round(sft["training_seconds"] / ours["training_seconds"], 2),
        "dtype": ours["dtype"],
        "protocols": results,
    }
    f32 = results.get("reference-float32", ref if ref["dtype"] == "float32" else None)
    if f32 is not None:  # against what a transformers user gets by default on a CPU
        summary["speedup_over_float32_reference"] = {
            name: round(f32["training_seconds"] / results[name]["training_seconds"], 2) for name in ("sft-certified", "memlaw")}
    print(f"{'protocol':<18} {'dtype':<9} {'steps':>6} {'train s':>8} {'command s':>10} {'EM':>6} {'certified':>9} {'peak RSS MiB':>13}")
    for r in results.values():
        print(f"{r['protocol']:<18} {r['dtype']:<9} {r['steps']:>6} {r['training_seconds']:>8.1f} {r['train_command_seconds']:>10.1f} "
              f"{r['exact_match']:>6.3f} {r['certified_fraction']:>9.3f} {r['peak_rss_mib']:>13.1f}")
    print(f"speed-up to recall: {summary['speedup_training']:.2f}x (training), {summary['speedup_train_command']:.2f}x (whole command)")
    print(f"  = {summary['from_cache']:.2f}x from the prefix cache (per step) x {summary['from_certified_stopping']:.2f}x from "
          f"certified stopping (steps) x {summary['from_method']:.2f}x from the method (sft -> memft_ot)")
    if "speedup_over_float32_reference" in summary:
        print("against the reference in float32: " + ", ".join(
            f"{n} {v:.2f}x" for n, v in summary["speedup_over_float32_reference"].items()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
