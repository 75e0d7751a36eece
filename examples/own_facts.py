"""Remember your own facts from Python: memorize, ask, add, check what else changed, save.

    .venv/bin/python examples/own_facts.py [--rank 2] [--out runs/facts-py]

The same workflow as the README's "Remember your own facts" (memlaw memorize / ask /
memorize --into), on the embedded default model and the two example files beside this script.
About 4 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import memlaw

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=2, help="the unit's rank (memlaw plan --data examples/facts.jsonl: 2)")
    p.add_argument("--out", default="runs/facts-py", help="where .save() keeps the memory (must not exist)")
    args = p.parse_args()

    # 1. Memorize: SFT until every record is certified (memlaw memorize's defaults), in a temporary run folder.
    memory = memlaw.memorize(HERE / "facts.jsonl", rank=args.rank)

    # 2. Ask: the greedy answer, each token's probability, and the record's certificate.
    answer = memory.ask("What is the guest Wi-Fi password?")
    print(f"answer: {answer.text!r}  min p {answer.min_prob:.3f}  matches its record: {answer.matches_target}  "
          f"certified: {answer.certified}")

    # 3. Add records without forgetting: trains from the current adapter until old and new are all certified.
    report = memory.add(HERE / "more_facts.jsonl")
    print("\n".join(report.lines()))
    print("release 3.3:", memory.ask("What is the codename of release 3.3?").text)

    # 4. What else changed: KL and perplexity on general text, unchanged answers on unrelated prompts.
    print("\n".join(memory.locality().lines()))

    # 5. Keep it: a run folder that `memlaw ask`, `memlaw eval` and `memlaw export` read.
    print("saved:", memory.save(args.out))


if __name__ == "__main__":
    main()
