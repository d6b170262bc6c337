#!/bin/bash
# Keep the record of every finished run of a comparison folder (results.json and config.yaml; no weights,
# no checkpoints) under DEST, in the same layout, so that `slao compare --collect` and `slao claims` run on
# them from a clone of the repository. Used for results/claims, the runs behind docs/results.md's claims.
#   tools/keep-results.sh runs/claims results/claims
set -euo pipefail
src=${1:?usage: tools/keep-results.sh COMPARISON_FOLDER DEST}
dst=$(mkdir -p "${2:?usage: tools/keep-results.sh COMPARISON_FOLDER DEST}" && cd "$2" && pwd)
cd "$src"
kept=0
while IFS= read -r f; do
  d=$(dirname "$f")
  grep -q '"finished": true' "$f" || continue
  mkdir -p "$dst/$d"
  cp "$f" "$d/config.yaml" "$dst/$d/"
  kept=$((kept + 1))
done < <(find . -path '*seed-*' -name results.json | sort)
echo "kept $kept finished runs in $dst"
