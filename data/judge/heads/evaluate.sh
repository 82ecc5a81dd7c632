#!/usr/bin/env bash
# The judge comparison in docs/judges.md: every judge on the same held-out items
# (`--split test`: request groups never seen in training; KoSBi's test file),
# with 95% bootstrap intervals per language. `--limit` takes the same fixed
# pseudo-random subset for every judge; the model judge (0.3 judgments/s on
# 2 cores) gets smaller subsets than the others.
set -euo pipefail
cd "$(dirname "$0")/../../.."
P=tests/fixtures/public
A="./target/release/anjeon judge-eval --split test"
OUT=${OUT:-/tmp/judge-eval}
mkdir -p "$OUT"
sets=(
  "xstest-completions:$P/xstest/model_completions"
  "assurai:data/sample"
  "square-responses:$P/kosbi-square/SQuARe/response_test_ood.json"
  "kosbi:$P/kosbi-square/KoSBi/kosbi_test.json"
)
names=(xstest sample square kosbi)
big=(600 0 0 1000)
for i in "${!sets[@]}"; do
  lim=(); [ "${big[$i]}" != 0 ] && lim=(--limit "${big[$i]}")
  $A --labels "${sets[$i]}" "${lim[@]}" --judge refusal --compare head,ensemble > "$OUT/${names[$i]}-heads.md"
  $A --labels "${sets[$i]}" --limit "${MODEL_LIMIT:-60}" --judge refusal --compare head,ensemble,qwen2.5-coder-1.5b-instruct > "$OUT/${names[$i]}-model.md"
done
