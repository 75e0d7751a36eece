"""The reference recipe on the default model: EM, steps to certified and ΔL (issue 12, acceptance 2).

`memlaw train` with the paper's PhoneBook settings (sft, lr 1e-2, dropout 0.1, linear decay, clip
1.0, 200 epochs, batch 16 = one step per epoch) on 16 PhoneBook records at rank 8, run twice:
for the full 200 epochs (EM, ΔL) and with --stop-when certified (steps to certified). Only the
`memlaw` command line is used, so the same script measures any version of memlaw:

    python benchmarks/reference_recipe.py --out runs/bench-reference-recipe
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RECIPE = ["--method", "sft", "--lr", "0.01", "--dropout", "0.1", "--epochs", "200", "--batch-size", "16"]


def memlaw(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "memlaw.cli", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-reference-recipe")
    p.add_argument("--records", type=int, default=16)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args()
    out = Path(args.out)
    data = out / "pb.jsonl"
    memlaw("data", "phonebook", "--records", str(args.records), "--seed", str(args.seed), "--out", str(data))
    result = {"records": args.records, "rank": args.rank, "seed": args.seed}
    for name, extra in (("full", []), ("certified", ["--stop-when", "certified"])):
        start = time.perf_counter()
        memlaw("train", "--data", str(data), "--out", str(out / name), "--rank", str(args.rank), "--seed",
               str(args.seed), "--overwrite", "--quiet", *RECIPE, *extra)
        m = json.loads((out / name / "metrics.json").read_text(encoding="utf-8"))
        keys = ("exact_match", "certified_fraction", "initial_loss", "final_loss", "delta_loss", "delta_answer_loss",
                "steps", "steps_to_certified")
        result[name] = {k: m.get(k) for k in keys} | {"seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
