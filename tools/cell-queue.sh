#!/bin/bash
# One lane of a comparison grid run a cell at a time from a queue file, so that a grid too long for one
# sitting can be stopped between cells: each line of QUEUE is "METHOD SEED ORDER"; the lane takes the first
# line (under a lock, so several lanes share one queue), runs that cell with `slao compare` and the
# arguments after --, and goes on until the queue is empty. Delete lines to stop the lanes early: a cell
# that has started finishes. One thread per lane; finished cells are never rerun (slao compare skips them).
#   tools/cell-queue.sh runs/queue.txt 1 -- --config configs/superni-claims.yaml \
#     --data-dir ../shared/data/superni --output runs/claims &
#   tools/cell-queue.sh runs/queue.txt 2 -- ...same arguments... &
# Each cell's output goes to QUEUE.lane-N.log; a line per start and end (with the exit status) to QUEUE.log.
set -uo pipefail
queue=${1:?usage: tools/cell-queue.sh QUEUE LANE -- SLAO_COMPARE_ARGS...}
lane=${2:?usage: tools/cell-queue.sh QUEUE LANE -- SLAO_COMPARE_ARGS...}
shift 2
[ "${1:-}" = "--" ] && shift
slao=${SLAO:-slao}
while true; do
  line=$(flock "$queue.lock" bash -c 'l=$(head -n1 "$1"); [ -n "$l" ] && sed -i 1d "$1"; echo "$l"' _ "$queue")
  [ -z "$line" ] && break
  read -r method seed order <<< "$line"
  echo "$(date +%FT%T) lane $lane start $method seed $seed order $order" >> "$queue.log"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
    "$slao" compare "$@" --methods "$method" --seeds "$seed" --orders "$order" >> "$queue.lane-$lane.log" 2>&1
  rc=$?
  echo "$(date +%FT%T) lane $lane end $method seed $seed order $order rc=$rc" >> "$queue.log"
done
echo "$(date +%FT%T) lane $lane done" >> "$queue.log"
