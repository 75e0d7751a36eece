"""The GPU check: what only a GPU can tell, in one script that runs on a machine with one GPU in under 8 minutes.

  1. tests  — the test files with CUDA paths (prefix cache on cuda, packed cells on cuda, training, dtype),
              on the GPU;
  2. step   — benchmarks/step_time.py on the default model: PEFT vs memlaw without and with the prefix cache
              (steps/s, GFLOP/step, cache build, peak memory);
  3. packed — a sweep of K cells that share their data (ranks 1/2/4/8, a seed per four cells, one data file),
              at K = 1, 4, 16, packed (--pack on) and, at K = 4 and 16, one at a time (--pack off): cells per
              hour, and whether the packed rows equal the one-at-a-time rows (rtol 1e-5, atol 1e-5; bf16 on
              CUDA: rtol and atol 1e-2).

Every part writes its output under OUT (default: a temporary folder); the figures go to OUT/gpu_check.md
and OUT/gpu_check.json, and with --docs FILE replace the block between <!-- gpu-check:begin --> and
<!-- gpu-check:end --> in FILE (docs/benchmarks.md).

    .venv/bin/python benchmarks/gpu_check.py [--out OUT] [--docs docs/benchmarks.md]
    .venv/bin/python benchmarks/gpu_check.py --dry-run [--model DIR]   # on the CPU, tiny sizes: checks the script

--dry-run runs every part on the CPU at tiny sizes (the tests only collected), so the suite can keep the
script working between the rare sessions that have a GPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_prefix_cache.py", "tests/test_packs.py", "tests/test_training.py", "tests/test_dtype.py"]
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


@dataclasses.dataclass
class Plan:
    """The sizes of one check: the real one on a GPU, or --dry-run's on the CPU."""

    device: str
    model: str
    step_args: list[str]
    packs: list[int]  # K: cells per sweep
    length: int  # PhoneBook answer tokens of the packed sweeps' data
    max_steps: int
    batch_size: int
    test_args: list[str]
    timeout_s: int


def plan(args) -> Plan:
    if args.dry_run:
        return Plan("cpu", args.model, ["--length", "40", "--rounds", "1", "--steps", "1", "--batch-size", "2"],
                    [1, 2], 20, 2, 2, ["--collect-only", "-q"], 300)
    # batch 4: K = 16 cells fill one 64-record micro-batch (memlaw.sweep.packs.PACK_ROWS), the launch-bound regime
    return Plan("cuda", args.model, ["--rounds", "3", "--steps", "4"], [1, 4, 16], 320, 50, 4, ["-q", "-x"], 240)


def run_tests(p: Plan, out: Path) -> dict:
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "pytest", *p.test_args, *TEST_FILES], cwd=ROOT, capture_output=True,
                           text=True, timeout=p.timeout_s)
    (out / "tests.log").write_text(child.stdout + child.stderr, encoding="utf-8")
    last = (child.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": child.returncode, "summary": last, "seconds": round(time.perf_counter() - start, 1)}


def run_step_time(p: Plan, out: Path) -> dict:
    child = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--model", p.model,
                            "--device", p.device, *p.step_args], cwd=ROOT, capture_output=True, text=True,
                           timeout=p.timeout_s)
    (out / "step_time.log").write_text(child.stdout + child.stderr, encoding="utf-8")
    if child.returncode != 0:
        return {"returncode": child.returncode, "error": (child.stderr.strip().splitlines() or ["?"])[-1]}
    return {"returncode": 0, **json.loads(child.stdout.strip().splitlines()[-1])}


def pack_grid(p: Plan, k: int):
    """K cells of one data file: ranks 1/2/4/8, then the next seed (data_seed fixed, so the data stays one)."""
    from memlaw.sweep import parse_grid

    ranks = [1, 2, 4, 8][: min(k, 4)]
    seeds = list(range(1, max(1, k // 4) + 1))
    return parse_grid({
        "name": f"gpu-check-k{k}", "model": p.model, "benchmark": "phonebook", "methods": ["sft"], "ranks": ranks,
        "lengths": [p.length], "seeds": seeds, "data_seed": 42, "layer": None,
        "train": {"lr": 0.05, "dropout": 0.0, "epochs": 1000, "max_steps": p.max_steps, "batch_size": p.batch_size,
                  "device": p.device},
    }, "gpu-check")


def run_packed(p: Plan, out: Path) -> list[dict]:
    import pandas as pd

    from memlaw.sweep import TIMING_COLUMNS, run_sweep

    rows, tol = [], 1e-2 if p.device == "cuda" else 1e-5
    for k in p.packs:
        grid = pack_grid(p, k)
        frames = {}
        for mode in (["on", "off"] if k > 1 else ["on"]):
            start = time.perf_counter()
            frame = run_sweep(grid, out / f"k{k}-{mode}", pack=mode, progress=False)
            wall = time.perf_counter() - start
            frames[mode] = frame.drop(columns=list(TIMING_COLUMNS) + ["run_dir"])
            rows.append({"K": k, "pack": mode, "cells": len(frame), "ok": int((frame["status"] == "ok").sum()),
                         "wall_s": round(wall, 1), "cells_per_hour": round(len(frame) / wall * 3600, 1)})
        if "off" in frames:
            try:
                pd.testing.assert_frame_equal(frames["on"], frames["off"], check_exact=False, rtol=tol, atol=tol)
                same = True
            except AssertionError:
                same = False
            for row in rows[-2:]:
                row["rows_equal"] = same
    return rows


def markdown(result: dict) -> str:
    tests, step, packed = result["tests"], result["step"], result["packed"]
    lines = [f"GPU check of {result['when']} on {result['device_name']} (`benchmarks/gpu_check.py`"
             f"{' --dry-run' if result['dry_run'] else ''}), {result['seconds']:.0f} s in all.", "",
             f"- tests ({' '.join(TEST_FILES)}): {tests['summary']} (exit {tests['returncode']}, {tests['seconds']} s)"]
    if step.get("returncode") == 0:
        rate = step["steps_per_second"]
        lines.append(f"- step time, {step['model']} {step['dtype']}, rank {step['rank']}, batch {step['batch_size']}: "
                     + ", ".join(f"{n} {v} steps/s" for n, v in rate.items())
                     + f"; cache / peft {step['ratio_cache_over_peft']}x")
    else:
        lines.append(f"- step time: failed ({step.get('error')})")
    lines += ["", "| K cells | --pack | ok | wall (s) | cells / hour | rows equal |", "|---|---|---|---|---|---|"]
    for r in packed:
        same = {None: "—", True: "yes", False: "NO"}[r.get("rows_equal")]
        lines.append(f"| {r['K']} | {r['pack']} | {r['ok']}/{r['cells']} | {r['wall_s']} | {r['cells_per_hour']} | {same} |")
    return "\n".join(lines) + "\n"


def write_docs(path: Path, text: str) -> None:
    from memlaw.io import atomic_write_text

    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{path}: no {BEGIN} … {END} block to replace")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(path, f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny sizes (tests collected only)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=None, help="where the parts write (default: a temporary folder)")
    ap.add_argument("--docs", default=None, help="replace the gpu-check block of this file with the figures")
    args = ap.parse_args()

    import torch

    p = plan(args)
    if p.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; --dry-run checks the script on the CPU", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="memlaw-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {"dry_run": args.dry_run, "when": time.strftime("%Y-%m-%d"),
              "device_name": torch.cuda.get_device_name() if p.device == "cuda" else "the CPU"}
    for name, part in (("tests", run_tests), ("step", run_step_time), ("packed", run_packed)):
        t = time.perf_counter()
        result[name] = part(p, out)
        print(f"gpu_check: {name} done in {time.perf_counter() - t:.0f} s", flush=True)
    result["seconds"] = time.perf_counter() - start
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    (out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    if args.docs:
        write_docs(Path(args.docs), text)
    ok = result["tests"]["returncode"] == 0 and result["step"].get("returncode") == 0 and all(
        r["ok"] == r["cells"] and r.get("rows_equal") is not False for r in result["packed"])
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
