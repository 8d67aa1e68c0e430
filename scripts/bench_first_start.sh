#!/usr/bin/env bash
# First start from a fresh clone, as a new user meets it: `git clone`, then `bash scripts/up.sh` until
# /readyz answers 200 (venv, install, embedded servers, migrations, every role); then a warm start of the
# same clone. Nothing is reused from earlier installs (empty uv and pip caches), so the packages are
# downloaded from the index as on a fresh machine. Prints one JSON line.
#   bash scripts/bench_first_start.sh            # PORT=18765 by default
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
port="${PORT:-18765}"
export UV_CACHE_DIR="$work/uv-cache" PIP_NO_CACHE_DIR=1 ECHELON_API_PORT="$port"
git clone -q "$src" "$work/clone"
cd "$work/clone"
pid=""
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

elapsed=""
ready_after() { # sets $elapsed: seconds from `bash scripts/up.sh` to /readyz 200
  local log="$1" t0
  t0=$(date +%s.%N)
  bash scripts/up.sh >"$work/$log" 2>&1 &
  pid=$!
  until curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; do
    kill -0 "$pid" 2>/dev/null || { echo "up.sh exited before ready:" >&2; tail -20 "$work/$log" >&2; exit 1; }
    sleep 0.05
  done
  elapsed=$(echo "$(date +%s.%N) - $t0" | bc)
}
stop() { # SIGTERM, then sets $elapsed: the seconds until up.sh is gone
  local t0
  t0=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
  elapsed=$(echo "$(date +%s.%N) - $t0" | bc)
}

ready_after first.log
first=$elapsed
grep -E '^echelon: |Prepared|Installed' "$work/first.log" >&2 || true
stop
first_stop=$elapsed
ready_after warm.log
warm=$elapsed
stop
warm_stop=$elapsed
printf '{"first_start_s": %.2f, "warm_start_s": %.2f, "stop_s": [%.2f, %.2f], "goal": {"first_s": 20, "warm_s": 5}}\n' \
  "$first" "$warm" "$first_stop" "$warm_stop"
