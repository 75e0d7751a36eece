#!/usr/bin/env bash
# Stage the finished cells of a sweep folder that is still running (issue 14's study runs across sessions):
# grid.yaml, data/, the results tables and every cell folder that holds metrics.json; a cell in flight is left out.
# Usage: scripts/commit_study_cells.sh results/smollm2-135m/phonebook "message"
set -euo pipefail
dir=$1
msg=$2
git add "$dir/grid.yaml" "$dir/data" "$dir/results.csv" "$dir/results.parquet"
for cell in "$dir"/cells/*/; do
    if [ -f "$cell/metrics.json" ]; then git add "$cell"; fi
done
git commit -qm "$msg" -- "$dir" && git log --oneline -1  # only the study's folder, whatever else is staged
