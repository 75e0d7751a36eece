#!/usr/bin/env bash
# The study of docs/reproduction.md (issue 14), end to end and resumable: every sweep skips its finished cells.
# About 4 hours on 2 CPU cores. Afterwards the law is copied into the package (plan --data's default law).
set -euo pipefail
memlaw=${MEMLAW:-.venv/bin/memlaw}
out=results/smollm2-135m
$memlaw sweep --preset smollm2-paper --out $out/phonebook
$memlaw sweep --preset smollm2-paper-linear-rule --out $out/linear-rule
$memlaw sweep $out/seed43.yaml --out $out/seed43
$memlaw fit $out/phonebook --exclude-saturated --holdout "rank>=max"
$memlaw analyze $out/phonebook
$memlaw report $out/phonebook
$memlaw report $out/linear-rule
cp $out/phonebook/law/law.json src/memlaw/law/defaults/smollm2-135m-law.json
