"""Does `memlaw plan --data` answer for files that are not PhoneBook? The shipped capacity law against probes.

For each records file: the rank the shipped capacity law plans (memlaw.law.capacity, no probe),
the smallest rank a probe certifies (ranks 1, 2, 4, … with memorize's settings and the probe's
300-step budget, as `plan` does without a law), and `memlaw memorize` at the planned rank with
its defaults (2000-step budget): does it certify every record? The law passes on a file when the
planned rank certifies it and is within one doubling of the probe's rank.

Files: examples/facts.jsonl, and two it writes (seeded): API keys ("sk-" + 20 random characters,
--keys of them) and six-digit order codes (--codes); any --data FILE may be added.

    .venv/bin/python benchmarks/plan_transfer.py [--keys 8] [--codes 16] [--data FILE ...] [--out runs/bench-plan]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dtype_memorize import key_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def code_records(n: int, seed: int) -> list[dict]:
    """`n` records "What is the order code of order #<k>?" -> six random digits."""
    rng = random.Random(seed)
    return [{"id": f"order-{k}", "query": f"What is the order code of order #{1000 + 37 * k}?",
             "target": "".join(rng.choice("0123456789") for _ in range(6))} for k in range(n)]


def main() -> None:
    from memlaw.law.advice import (DEFAULT_MODEL_CAPACITY, capacity_advice, default_file, probe_advice,
                                   summarize_data)
    from memlaw.memory import memorize

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", default=[], help="more records files to check")
    p.add_argument("--keys", type=int, default=8, help="API-key records to write (default: 8)")
    p.add_argument("--codes", type=int, default=16, help="order-code records to write (default: 16)")
    p.add_argument("--out", default="runs/bench-plan")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [ROOT / "examples" / "facts.jsonl"]
    for name, rows in (("keys.jsonl", key_records(args.keys, 0)), ("codes.jsonl", code_records(args.codes, 0))):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files.append(out / name)
    files += [Path(f) for f in args.data]
    capacity = default_file(DEFAULT_MODEL_CAPACITY)
    rows = []
    for data in files:
        summary = summarize_data(data)
        planned = capacity_advice(summary, capacity)
        start = time.perf_counter()
        probed = probe_advice(str(data), "default")
        probe_seconds = time.perf_counter() - start
        start = time.perf_counter()
        memory = memorize(str(data), rank=planned.rank, out=out / f"{data.stem}-r{planned.rank}", locality=False)
        metrics = json.loads((memory.path / "metrics.json").read_text(encoding="utf-8"))
        row = {"file": data.name, "records": summary.records, "answer_tokens": summary.answer_tokens,
               "initial_loss": round(summary.initial_loss, 3), "information_bits": round(summary.information_bits, 1),
               "information_source": summary.information_source, "planned_rank": planned.rank,
               "probed_rank": probed.rank, "probe_seconds": round(probe_seconds, 1),
               "planned_certified": metrics["certified_fraction"], "planned_steps": metrics["steps"],
               "memorize_seconds": round(time.perf_counter() - start, 1),
               "within_one_doubling": probed.rank / 2 <= planned.rank <= probed.rank * 2}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'file':<14} {'records':>7} {'bits':>7} {'source':<32} {'planned':>7} {'probed':>6} {'certified at planned':>21}")
    for r in rows:
        print(f"{r['file']:<14} {r['records']:>7} {r['information_bits']:>7.0f} {r['information_source']:<32} "
              f"{r['planned_rank']:>7} {r['probed_rank']:>6} {r['planned_certified']:>14.0%} ({r['planned_steps']} steps)")
    ok = all(r["planned_certified"] == 1.0 and r["within_one_doubling"] for r in rows)
    print(f"the capacity law {'passes' if ok else 'FAILS'} on every file: planned rank certifies, within one doubling of the probe")


if __name__ == "__main__":
    main()
