#!/usr/bin/env bash
# The dashboard's overhead on the demo: events/s and CPU seconds (user + system) without and with
# --dashboard (and one connected event-stream client), and with it but no checkpoints, taken one
# after the other in each repetition so that all see the same machine. Output: one line per run.
#   bench/dashboard_overhead.sh [EVENTS [REPETITIONS [PORT]]]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$("$root/scripts/bootstrap" test)/bin/python"
events=${1:-400000}
reps=${2:-3}
port=${3:-8799}
work="$(mktemp -d)"
cd "$work"
for rep in $(seq "$reps"); do
  for mode in off on nock; do
    args=(demo --events "$events" --workers 1 --quiet-alerts --no-progress --out "out-$mode")
    if [ "$mode" != off ]; then args+=(--dashboard "127.0.0.1:$port"); fi
    if [ "$mode" = nock ]; then args+=(--checkpoint-interval 0); fi
    (sleep 4; timeout 3600 curl -s -N "http://127.0.0.1:$port/api/events" > /dev/null || true) &
    client=$!
    /usr/bin/time -f "%U %S" -o "time-$mode" "$py" -m tideflow "${args[@]}" > "log-$mode" 2>&1
    kill "$client" 2> /dev/null || true
    wait "$client" 2> /dev/null || true
    echo "rep=$rep mode=$mode cpu_user_sys=$(tr '\n' ' ' < "time-$mode")" \
      "load=$(cut -d' ' -f1 /proc/loadavg) $(grep 'demo finished' "log-$mode")"
  done
done
rm -rf "$work"
