#!/usr/bin/env bash
# Make the espeak-ng evaluation audio: each line `id<TAB>lang<TAB>text` of
# refs.tsv becomes audio/ID.wav (espeak-ng, voice = lang, 150 words/min,
# converted by sox to 16 kHz mono 16-bit PCM). Needs espeak-ng and sox
# (Debian: apt-get install espeak-ng sox). Then:
#   anjeon audio eval --refs data/asr/espeak/refs.tsv
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p audio
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
grep -v '^#' refs.tsv | while IFS=$'\t' read -r id lang text; do
  [ -n "$id" ] || continue
  espeak-ng -v "$lang" -s 150 -w "$tmp/raw.wav" "$text"
  sox "$tmp/raw.wav" -r 16000 -b 16 -c 1 "audio/$id.wav"
done
echo "wrote $(ls audio/*.wav | wc -l) clips to $(pwd)/audio"
