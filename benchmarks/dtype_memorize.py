"""`memlaw memorize` in bfloat16 against float32 on the CPU, and the certificate in both dtypes.

Writes a file of API keys (random, seeded: the held-out-style records a user memorizes), then
runs `memlaw memorize` on it twice, one after the other, in child processes: with --dtype bfloat16
and with --dtype float32, and says what --dtype auto picks on this machine. Each run is then
re-evaluated with `memlaw eval --dtype` in the other dtype, so "certified => greedy decoding
reproduces the record" is checked where the memory was trained and where it may be used
(certificate_violations: certified records whose greedy answer differs; must be 0).

    .venv/bin/python benchmarks/dtype_memorize.py [--records 12] [--rank 8] [--seed 0] [--out runs/bench-dtype]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import time
from pathlib import Path

SERVICES = ["billing", "search", "mail", "storage", "maps", "payments", "analytics", "auth", "backup", "cdn",
            "chat", "crm", "dns", "email", "feeds", "git", "logs", "metrics", "queue", "video"]


def key_records(n: int, seed: int) -> list[dict]:
    """`n` records "What is the API key of the <service> service?" -> a random 20-character key."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    names = SERVICES + [f"{s}-{i}" for i in range(2, 1 + n // len(SERVICES) + 1) for s in SERVICES]
    return [{"id": f"key-{i}", "query": f"What is the API key of the {names[i]} service?",
             "target": "sk-" + "".join(rng.choice(alphabet) for _ in range(20))} for i in range(n)]


def memlaw(*args: str) -> float:
    """Run a memlaw command quietly; return its wall time (exit 1 of memorize = budget ran out, kept)."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "memlaw.cli", *args], capture_output=True, text=True)
    if child.returncode not in (0, 1):
        sys.exit(f"memlaw {' '.join(args)} failed:\n{child.stderr}")
    return time.perf_counter() - start


def read(folder: Path) -> dict:
    m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {k: m.get(k) for k in ("exact_match", "certified_fraction", "certificate_violations", "steps",
                                  "train_seconds", "final_loss")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=12)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="the keys' seed (training keeps memorize's seed)")
    p.add_argument("--data", default=None, help="memorize this records file instead of generated keys")
    p.add_argument("--out", default="runs/bench-dtype")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "keys.jsonl"
    if not args.data:
        data.write_text("".join(json.dumps(r) + "\n" for r in key_records(args.records, args.seed)), encoding="utf-8")
    result: dict = {"data": str(data), "rank": args.rank}
    import torch

    from memlaw.model.loading import choose_dtype

    auto, why = choose_dtype("auto", torch.device("cpu"))
    result["auto"] = {"dtype": str(auto).replace("torch.", ""), "reason": why}
    for name, dtype, other in (("bfloat16", "bfloat16", "float32"), ("float32", "float32", "bfloat16")):
        run = out / name
        seconds = memlaw("memorize", "--data", str(data), "--out", str(run), "--rank", str(args.rank),
                         "--dtype", dtype, "--overwrite")
        config = (run / "config.yaml").read_text(encoding="utf-8")
        ran = next(line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("dtype:"))
        memlaw("eval", str(run), "--dtype", other, "--no-locality")
        result[name] = {"dtype": ran, "command_seconds": round(seconds, 1), **read(run),
                        f"in_{other}": read(run / f"eval-{other}")}
    a, f = result["bfloat16"], result["float32"]
    result["speedup_command"] = round(f["command_seconds"] / a["command_seconds"], 2)
    result["speedup_training"] = round(f["train_seconds"] / a["train_seconds"], 2)
    print(f"{'run':<8} {'dtype':<9} {'steps':>5} {'train s':>8} {'command s':>9} {'certified':>9} {'violations':>10}  "
          "re-evaluated in the other dtype: certified, violations")
    for name in ("bfloat16", "float32"):
        r = result[name]
        other = next(v for k, v in r.items() if k.startswith("in_"))
        print(f"{name:<8} {r['dtype']:<9} {r['steps']:>5} {r['train_seconds']:>8.1f} {r['command_seconds']:>9.1f} "
              f"{r['certified_fraction']:>9.3f} {r['certificate_violations']:>10}  "
              f"{other['certified_fraction']:.3f}, {other['certificate_violations']}")
    print(f"bfloat16 over float32: {result['speedup_training']:.2f}x training speed, {result['speedup_command']:.2f}x command")
    print(f"--dtype auto here: {result['auto']['dtype']} ({result['auto']['reason']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
