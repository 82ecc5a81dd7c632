#!/bin/bash
# Submit an anjeon run as a Slurm array of N shards plus a dependent merge.
#   N=4 OUT=/shared/runs/r1 RUN_ARGS="--target smollm2-135m-instruct --judge refusal" deploy/slurm/submit.sh
# Prints the array's and the merge's job ids.
set -euo pipefail
: "${N:?set N, the number of shards}" "${OUT:?set OUT}"
ANJEON=${ANJEON:-anjeon}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
array=$(sbatch --parsable --array="0-$((N - 1))" --chdir="$PWD" \
  --export=ALL,OUT="$OUT",ANJEON="$ANJEON",RUN_ARGS="${RUN_ARGS:-}" "$here/anjeon-array.sbatch")
merge=$(sbatch --parsable --dependency="afterok:$array" --chdir="$PWD" --job-name=anjeon-merge \
  --output="$OUT/merge-%j.log" \
  --wrap "\"$ANJEON\" merge $(for i in $(seq 0 $((N - 1))); do printf '%q ' "$OUT/shard-$i"; done) --out \"$OUT/merged\"")
echo "array $array merge $merge"
