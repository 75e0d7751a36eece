"""Sweep throughput: cells per hour with the local engine before and after model reuse, packed, and with Ray.

One command runs the same cells (the first --cells cells of a preset, default the demo's 16; --length L
keeps the cells of one length, which share their data) in these ways, one after the other, each into its
own fresh folder:

  local-reload — the local engine loading the base model for every cell, one cell at a time (memlaw before issue 15);
  local        — the local engine with its model loaded once, one cell at a time (--pack off);
  packed       — the local engine training the cells that share their data in one pass (--pack on, issue 27);
  ray          — the Ray engine with --workers actors (default 2), each loading the model once, one cell each.

and reports, per variant, the wall time of the whole sweep, cells per hour, and whether the rows
equal the first variant's (timing columns aside; Ray's workers run one thread each, so its float sums
may round differently: compared to rtol 1e-5; a pack multiplies larger matrices, whose float32 sums round
differently, and over 50 steps a loss moves by ~2e-6: compared to rtol 1e-5 and atol 1e-5). Wall time
includes everything a user waits for: starting Ray, loading models, generating data, training,
evaluating, writing the tables.

    .venv/bin/python benchmarks/sweep_throughput.py [--preset smollm2-demo] [--cells 16] [--workers 2]
        [--variants local-reload,local,packed,ray] [--device cpu] [--length L] [--batch-size B] [--rounds N]

With --rounds N the variants run N times in alternating order (ABAB…, then BA…) after a one-cell
warm-up sweep, and each variant's median wall time counts: on a noisy machine, and against the cold
caches the first sweep of a process meets, the order of the variants otherwise decides a 10–30 % gap.

With --device cuda (the lent GPU): add --workers N to run N cells at once on one GPU (each actor
then asks for 1/N of it) against --workers 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("local-reload", "local", "packed", "ray")


def run_variant(name: str, grid, out: Path, workers: int, gpu_share: float | None):
    from memlaw.sweep import run_sweep

    start = time.perf_counter()
    if name == "ray":
        import ray

        ray.init(num_cpus=workers, num_gpus=1 if gpu_share else 0, include_dashboard=False, log_to_driver=False)
        try:
            frame = run_sweep(grid, out, engine="ray", workers=workers, progress=False, gpus_per_cell=gpu_share or 1.0,
                              pack="off")
        finally:
            ray.shutdown()
    else:
        frame = run_sweep(grid, out, engine="local", progress=False, reuse_model=name != "local-reload",
                          pack="on" if name == "packed" else "off")
    return frame, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="smollm2-demo")
    p.add_argument("--cells", type=int, default=16, help="the first N cells of the preset")
    p.add_argument("--workers", type=int, default=2, help="ray: actors (cells at once)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", default=None, help="override the preset's device (cpu / cuda)")
    p.add_argument("--length", type=int, default=None, help="keep the cells of this length only (one data file)")
    p.add_argument("--batch-size", type=int, default=None, help="override the preset's batch size")
    p.add_argument("--rounds", type=int, default=1, help="run the variants this many times, alternating their order "
                   "(after a warm-up sweep of one cell); each variant's median wall time counts")
    p.add_argument("--out", default=None, help="keep the sweep folders here (default: a temporary folder)")
    args = p.parse_args()

    import dataclasses

    import pandas as pd
    import torch

    from memlaw.sweep import TIMING_COLUMNS, load_preset

    grid = load_preset(args.preset)
    keep = [c for c in grid.cells() if args.length is None or c.length == args.length][: args.cells]
    if args.device:
        grid = dataclasses.replace(grid, train={**grid.train, "device": args.device})
    if args.batch_size:
        grid = dataclasses.replace(grid, train={**grid.train, "batch_size": args.batch_size})
    # Only the first N cells: a block per kept cell (blocks select a union of partial grids).
    grid = dataclasses.replace(grid, blocks=[{"methods": [c.method], "ranks": [c.rank], "lengths": [c.length],
                                              "seeds": [c.seed]} for c in keep])
    gpu_share = 1.0 / args.workers if grid.device == "cuda" else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="memlaw-throughput-"))
    results, frames = [], {}
    if args.rounds > 1:  # warm-up: the first sweep of a process pays for cold caches (files, imports, kernels)
        run_variant("local", dataclasses.replace(grid, blocks=grid.blocks[:1]), root / "warm-up", args.workers, gpu_share)
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]  # alternate, so drift hits every variant alike
        for name in order:
            frame, wall = run_variant(name, grid, root / f"{name}-{round_}", args.workers, gpu_share)
            walls[name].append(wall)
            frames.setdefault(name, frame.drop(columns=list(TIMING_COLUMNS)))
            print(json.dumps({"round": round_, "variant": name, "wall_s": round(wall, 1),
                              "ok": int((frame["status"] == "ok").sum())}), flush=True)
    for name in variants:
        frame, wall = frames[name], statistics.median(walls[name])
        ok = int((frame["status"] == "ok").sum())
        same, first = None, variants[0]
        if name != first:
            try:
                inexact = {first, name} & {"ray", "packed"}
                pd.testing.assert_frame_equal(frames[name], frames[first], check_exact=not inexact, rtol=1e-5,
                                              atol=1e-5 if "packed" in inexact else 1e-6)
                same = True
            except AssertionError:
                same = False
        row = {"variant": name, "cells": len(frame), "ok": ok, "wall_s": round(wall, 1),
               "walls_s": [round(w, 1) for w in walls[name]],
               "cells_per_hour": round(len(frame) / wall * 3600, 1), "rows_equal_first": same}
        results.append(row)
        print(json.dumps(row), flush=True)
    base = results[0]
    print()
    at = f" of length {args.length}" if args.length else ""
    print(f"{args.preset}, first {len(keep)} cells{at}, batch {grid.train.get('batch_size')}, device {grid.device}, "
          f"torch threads {torch.get_num_threads()}, ray workers {args.workers}")
    print(f"| variant | cells | {'median ' if args.rounds > 1 else ''}wall (s) | cells / hour | × {base['variant']} | rows equal {base['variant']}'s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['cells_per_hour'] / base['cells_per_hour']:.2f}×"
        same = {None: "—", True: "yes", False: "NO"}[r["rows_equal_first"]]
        print(f"| {r['variant']} | {r['cells']} | {r['wall_s']} | {r['cells_per_hour']} | {ratio} | {same} |")
    return 0 if all(r["rows_equal_first"] in (None, True) for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
