"""Locality means of `memorize` (issue 26): each variant memorizes the same file and reports what it cost and
what it changed away from the records. One JSON line per variant, run one after the other in this process.

    .venv/bin/python benchmarks/locality_tradeoff.py examples/facts.jsonl 2 runs/locality \\
        '{}' '{"preserve_weight": 10}' '{"preserve_gate": 0.5, "preserve_weight": 10}'

Each variant is a dict of TrainConfig fields added to memorize's defaults. Locality is measured on the built-in
general text and unrelated prompts (memlaw.evaluate.locality), which the means' replayed inputs never include.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import memlaw
from memlaw.rundir import RunDir


def main(argv: list[str]) -> None:
    data, rank, out = argv[0], int(argv[1]), Path(argv[2])
    for variant in (json.loads(v) for v in argv[3:] or ["{}"]):
        name = "-".join(f"{k}{v}" for k, v in variant.items()) or "plain"
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        started = time.time()
        memlaw.memorize(data, rank=rank, out=folder, **variant)
        run = RunDir(folder)
        metrics, state, loc = run.read_metrics(), run.read_state(), run.read_locality()
        print(json.dumps({
            "variant": variant, "certified": metrics.certified_fraction, "em": metrics.exact_match,
            "steps_to_certified": state.get("steps_to_certified"), "steps": state["steps"],
            "train_seconds": state["train_seconds"], "wall": round(time.time() - started, 1),
            "kl_text": round(loc["kl_text"], 5), "ppl_change": round(loc["ppl_adapted"] / loc["ppl_base"] - 1, 4),
            "kl_prompts": round(loc["kl_prompts"], 5), "unchanged": loc["unchanged"]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
