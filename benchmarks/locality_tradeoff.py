"""Locality means of `memorize` (issue 26): each variant memorizes the same file and reports what it cost and
what it changed away from the records. One JSON line per variant, run one after the other in this process.

    .venv/bin/python benchmarks/locality_tradeoff.py examples/facts.jsonl 2 runs/locality \\
        --paraphrases examples/facts_paraphrased.jsonl '{}' '{"preserve_gate": 0}' '{"preserve_weight": 10, "preserve_gate": 0}'

Each variant is a dict of TrainConfig fields added to memorize's defaults (which gate the unit: {"preserve_gate": 0}
is the paper's unit). Locality is measured on the built-in general text and unrelated prompts
(memlaw.evaluate.locality), which the means' replayed inputs never include. `--paraphrases FILE`: also the exact
match on reworded queries (records with the same targets), EasyEdit's generalization.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import memlaw
from memlaw.evaluate.run import evaluate_run
from memlaw.rundir import RunDir


def main(argv: list[str]) -> None:
    paraphrases = None
    if "--paraphrases" in argv:
        i = argv.index("--paraphrases")
        paraphrases, argv = argv[i + 1], argv[:i] + argv[i + 2 :]
    data, rank, out = argv[0], int(argv[1]), Path(argv[2])
    for variant in (json.loads(v) for v in argv[3:] or ["{}"]):
        name = "-".join(f"{k}{v}" for k, v in variant.items()) or "defaults"
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        started = time.time()
        memlaw.memorize(data, rank=rank, out=folder, **variant)
        run = RunDir(folder)
        metrics, state, loc = run.read_metrics(), run.read_state(), run.read_locality()
        reworded = evaluate_run(folder, paraphrases, out=folder / "eval-paraphrases") if paraphrases else None
        print(json.dumps({
            "variant": variant, "certified": metrics.certified_fraction, "em": metrics.exact_match,
            "steps_to_certified": state.get("steps_to_certified"), "steps": state["steps"],
            "train_seconds": state["train_seconds"], "wall": round(time.time() - started, 1),
            "kl_text": round(loc["kl_text"], 5), "ppl_change": round(loc["ppl_adapted"] / loc["ppl_base"] - 1, 4),
            "kl_prompts": round(loc["kl_prompts"], 5), "unchanged": loc["unchanged"],
            "gate_leaks": state.get("gate_leaks"), "gate_margin": state.get("gate_margin"),
            "paraphrases_em": None if reworded is None else reworded.exact_match}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
