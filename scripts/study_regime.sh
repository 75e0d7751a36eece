#!/usr/bin/env bash
# The regime study of issue 25 (docs/reproduction.md, "The law in its regime"), end to end and resumable: every sweep
# skips its finished cells, so rerun it after an interruption. About 12 CPU-hours on 2 cores in float32 (PhoneBook
# ~8-9 h, Long-Context ~3.5 h with its two 2000-epoch cells). Run it from a worktree pinned to one commit, writing into this checkout, e.g.:
#   git worktree add --detach /tmp/pin HEAD
#   PYTHONPATH=/tmp/pin/src MEMLAW=".venv/bin/python -m memlaw.cli" scripts/study_regime.sh
# and commit finished cells as they come: scripts/commit_study_cells.sh results/smollm2-135m/phonebook-regime "..."
set -euo pipefail
memlaw=${MEMLAW:-.venv/bin/memlaw}
out=results/smollm2-135m
$memlaw sweep --preset smollm2-regime --out $out/phonebook-regime
$memlaw sweep $out/long-context.yaml --out $out/long-context
$memlaw sweep $out/long-context-2000.yaml --out $out/long-context-2000
# The cells train on the pinned code (PYTHONPATH); the fits, analyses and reports are this checkout's own, which
# tests/test_study.py checks them against.
here="env -u PYTHONPATH $memlaw"
for d in phonebook-regime long-context; do
    $here fit $out/$d --holdout "rank>=max"                                    # law/law.json: held-out largest rank
    $here fit $out/$d --holdout "length>=max" --out $out/$d/law-length         # held-out longest length
    $here fit $out/$d --holdout "rank>=max" --exclude-saturated --out $out/$d/law-in-regime
    $here analyze $out/$d
    $here report $out/$d
done
# the ΔL law shipped for the default model (memlaw/law/defaults/, for plan --law; tests/test_study.py checks this copy)
cp $out/phonebook-regime/law/law.json src/memlaw/law/defaults/smollm2-135m-law.json
