#!/usr/bin/env bash
# Opens a run's report.html in a real headless browser (Debian's `chromium`),
# checks that the page and its charts rendered, and saves a screenshot to look at.
#
#   tests/browser/check_report.sh [RUN_DIR] [SCREENSHOT.png]
#
# Installs chromium and a Korean font (fonts-nanum) with apt-get when missing.
set -euo pipefail
dir=${1:-runs/sample}
shot=${2:-$dir/report.png}
html=$(realpath "$dir/report.html")
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-nanum >/dev/null
fi
prof=$(mktemp -d)
trap 'rm -rf "$prof"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$prof" --hide-scrollbars)
chromium "${flags[@]}" --window-size=1200,2600 --screenshot="$shot" "file://$html" 2>/dev/null
dom=$(chromium "${flags[@]}" --dump-dom "file://$html" 2>/dev/null)
svgs=$(grep -o '<svg' <<<"$dom" | wc -l)
rects=$(grep -o '<rect' <<<"$dom" | wc -l)
circles=$(grep -o '<circle' <<<"$dom" | wc -l)
echo "rendered: $svgs charts, $rects bars, $circles points; screenshot: $shot"
[ "$svgs" -ge 4 ] && [ "$rects" -ge 20 ] || { echo "charts missing from the rendered page" >&2; exit 1; }
[ -s "$shot" ] || { echo "no screenshot" >&2; exit 1; }
