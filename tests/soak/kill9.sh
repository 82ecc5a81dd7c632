#!/bin/bash
# kill -9 soak (issue 16): a real run (SmolLM2 target, SmolLM2 as the model
# judge, the bundled sample) is killed at N random moments (model load,
# generation, judging, report writing), each time resumed to the end, and
# checked: report.json byte-identical to an uninterrupted run, no record
# key twice, nothing lost. Not part of CI (about 1.5x a run per point).
#   bash tests/soak/kill9.sh [N=20] [path/to/anjeon]
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20}
ANJEON=$(realpath "${2:-target/release/anjeon}")
ARGS="run --target smollm2-135m-instruct --judge smollm2-135m-instruct --limit 8 --max-new-tokens 16 --attacks prefix-injection"
work=$(mktemp -d /tmp/anjeon-soak.XXXXXX)
t0=$(date +%s.%N)
$ANJEON $ARGS --out "$work/ref" >/dev/null 2>&1
rc=$?; [ $rc -le 1 ] || { echo "reference run failed ($rc)"; exit 1; }
T=$(echo "$(date +%s.%N) - $t0" | bc)
echo "uninterrupted run: ${T}s; killing at $N random moments in [0, ${T}s]"
fails=0
for i in $(seq 1 "$N"); do
  d="$work/k$i"
  at=$(python3 -c "import random; random.seed($i); print(round(random.uniform(0.05, $T), 2))")
  $ANJEON $ARGS --out "$d" >/dev/null 2>&1 &
  pid=$!
  sleep "$at"
  kill -9 $pid 2>/dev/null && killed=yes || killed="no (finished first)"
  wait $pid 2>/dev/null
  stage=$( [ -f "$d/plan.json" ] && echo "after plan" || { [ -s "$d/judgments.jsonl" ] && echo judging || { [ -s "$d/generations.jsonl" ] && echo generating || echo "loading"; }; })
  $ANJEON $ARGS --out "$d" >/dev/null 2>"$d.resume.log"
  rc=$?
  dup=$(for f in generations judgments; do python3 -c "
import json,sys
ks=[json.loads(l)['key'] for l in open('$d/$f.jsonl') if l.strip()]
print(len(ks)-len(set(ks)))"; done | paste -sd+ | bc)
  if [ $rc -le 1 ] && cmp -s "$work/ref/report.json" "$d/report.json" && [ "$dup" = 0 ]; then
    echo "point $i: killed at ${at}s ($stage, killed: $killed): resumed, report identical, 0 duplicate keys"
  else
    echo "point $i: killed at ${at}s ($stage): FAIL (rc $rc, duplicates $dup)"; fails=$((fails+1))
  fi
done
echo "$((N - fails)) of $N points passed ($work)"
[ $fails -eq 0 ]
