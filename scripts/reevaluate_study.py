"""Re-evaluate the finished cells of sweep folders, so their metrics.json carry the metrics of today's code.

The adapters are kept; each cell is evaluated again exactly as `memlaw eval CELL --no-locality`
would (teacher forcing and greedy decoding on its own data, in its own dtype), which rewrites
metrics.json and records.jsonl; then the sweep's results table is rebuilt from the cells. Used
when memlaw counted memory as information (bits_memorized, the format floor) for the committed
study: results/smollm2-135m was trained before those metrics existed.

    .venv/bin/python scripts/reevaluate_study.py results/smollm2-135m/phonebook results/smollm2-135m/seed43 ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from memlaw.evaluate.run import evaluate_run
from memlaw.rundir import RunDir
from memlaw.sweep.results import rebuild_results


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        cells = sorted(p for p in (folder / "cells").iterdir() if p.is_dir() and RunDir(p).is_finished())
        start = time.perf_counter()
        for i, cell in enumerate(cells, 1):
            evaluate_run(cell)
            print(f"{folder.name}: {i}/{len(cells)} {cell.name}", file=sys.stderr, flush=True)
        frame = rebuild_results(folder)
        print(f"{folder}: {len(cells)} cells re-evaluated in {time.perf_counter() - start:.0f} s; "
              f"results table rebuilt ({len(frame)} rows)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
