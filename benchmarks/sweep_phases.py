"""Where a sweep's time goes: wall time of the trainer's phases in one sweep, packed or one cell at a time.

Wraps the trainer's and the forward's entry points with timers (low overhead, unlike a profiler) and runs a
sweep of the first --cells cells of a preset (--length L: the cells of one length, which share their data):

    .venv/bin/python benchmarks/sweep_phases.py --pack off|on [--preset smollm2-demo] [--length 160]
        [--batch-size 4] [--cells 4]

Prints the sweep's wall time and, per phase, its total seconds and calls: optimizer_step (one cell's step) or
packed_step (a pack's, with its token-probability rows: trace_pack), the forwards inside them, the token-
probability passes (mid_training_stats, teacher_forced_pack), the initial statistics and the final evaluation
(evaluate_session, evaluate_pack). Nested phases overlap: forward time is inside the step time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import tempfile
import time
from pathlib import Path

PHASES = ("packed_step", "trace_pack", "optimizer_step", "evaluate_pack", "evaluate_session", "initial_stats",
          "teacher_forced_pack", "mid_training_stats")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pack", choices=("on", "off"), required=True)
    p.add_argument("--preset", default="smollm2-demo")
    p.add_argument("--length", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cells", type=int, default=4)
    args = p.parse_args()

    import memlaw.model.forward as forward
    import memlaw.train.trainer as trainer
    from memlaw.sweep import load_preset, run_sweep

    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter = collections.Counter()

    def timed(name: str, f):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - start
                calls[name] += 1
        return wrapper

    for name in PHASES:
        setattr(trainer, name, timed(name, getattr(trainer, name)))
    forward.AnswerForward.__call__ = timed("AnswerForward (one run)", forward.AnswerForward.__call__)
    forward.AnswerForward.packed = timed("AnswerForward.packed", forward.AnswerForward.packed)

    grid = load_preset(args.preset)
    keep = [c for c in grid.cells() if c.length == args.length][: args.cells]
    grid = dataclasses.replace(grid, train={**grid.train, "batch_size": args.batch_size}, blocks=[
        {"methods": [c.method], "ranks": [c.rank], "lengths": [c.length], "seeds": [c.seed]} for c in keep])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        frame = run_sweep(grid, Path(tmp) / "sweep", pack=args.pack, progress=False)
        wall = time.perf_counter() - start
    print(f"--pack {args.pack}: {len(frame)} cells ({int((frame['status'] == 'ok').sum())} ok), wall {wall:.1f} s")
    for name, s in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {name:26s} {s:7.2f} s  {calls[name]:5d} calls")


if __name__ == "__main__":
    main()
