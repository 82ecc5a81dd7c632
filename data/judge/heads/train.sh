#!/usr/bin/env bash
# Re-trains the bundled judge heads exactly as shipped (deterministic: seed 0,
# 5 grouped folds). Needs the EmbeddingGemma weights in the cache
# (`anjeon models fetch embeddinggemma-300m`) and the public label sets in
# SHARED (default ../shared/data, the copies this project was given).
# Only the development split of each set is read (see src/judge/labels.rs
# `in_dev`: 30% of request groups; KoSBi's own valid file whole). Held-out
# splits, and PyRIT's and JailbreakBench's judge-evaluation sets, are never
# used for training or tuning.
set -euo pipefail
cd "$(dirname "$0")/../../.."
SHARED=${SHARED:-../shared/data}
A="cargo run --release -q --"
$A judge train --task refusal --features response-mid --with-detector \
  --labels "xstest-completions:$SHARED/xstest/model_completions" \
  --labels assurai:data/sample \
  --out data/judge/heads/refusal-v2.safetensors > data/judge/heads/refusal-v2.md
$A judge train --task harm --features response --with-detector \
  --labels "kosbi:$SHARED/kosbi-square/KoSBi/kosbi_valid.json" \
  --labels "square-responses:$SHARED/kosbi-square/SQuARe/response_test_ood.json" \
  --labels assurai:data/sample \
  --out data/judge/heads/harm-v1.safetensors > data/judge/heads/harm-v1.md
