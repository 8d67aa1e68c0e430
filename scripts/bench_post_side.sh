#!/usr/bin/env bash
# POST /runs side by side with its floor, in one run, on one nats-server, with the same wrk (-t1):
#   floor   = scripts/post_floor_app.py /events (FastAPI: validate, envelope, await js.publish, 201)
#   project = the project's POST /api/v1/verification/runs (`echelon api`), every check on
# usage (from the project root):   bash scripts/bench_post_side.sh [always|default] [seconds] [rounds]
#   always  = JetStream fsyncs every write (sync_interval: always); default = the server's default sync
# Needs: wrk (Debian package), PostgreSQL and Redis on loopback (5432/6379; a throwaway database and Redis db 7
# are used and removed), the project's .venv (or PY=/path/to/python) with its nats-server.
# Prints one JSON line per measurement (cpu_us: the server process's CPU time per request, from /proc), then
# one line per concurrency with the project/floor ratios (medians over the rounds).
set -euo pipefail
SYNC=${1:-always}; SECS=${2:-8}; ROUNDS=${3:-2}
source "$(dirname "$0")/_side.sh"
side_start postside "$([ "$SYNC" = always ] && echo '  sync_interval: always')"
(cd "$PROJ/scripts" && BENCH_NATS_URL=$NATS_URL exec "$PY" -m uvicorn post_floor_app:app --host 127.0.0.1 \
  --port "$RAWP" --workers 1 --log-level warning --no-access-log) & FLOOR=$!; pids+=($FLOOR)
for _ in $(seq 150); do curl -sf -o /dev/null "http://127.0.0.1:$RAWP/" && break; sleep 0.2; done
cat >"$W/proj.lua" <<L
wrk.method = 'POST'
wrk.body = '{"repo_url":"https://github.com/acme/widgets","construct_id":"bench","oracle_type":"python","oracle_module":"pipeline_workers.oracles.sample","oracle_callable":"summarise","limit":10}'
wrk.headers['Content-Type'] = 'application/json'
wrk.headers['Authorization'] = 'Bearer $TOK'
L
wrk -t1 -c4 -d2s -s "$PROJ/scripts/post_floor.lua" "http://127.0.0.1:$RAWP/events" >/dev/null
wrk -t1 -c4 -d2s -s "$W/proj.lua" "http://127.0.0.1:$APIP/api/v1/verification/runs" >/dev/null
for c in 1 32; do
  for _ in $(seq "$ROUNDS"); do
    one floor "http://127.0.0.1:$RAWP/events" "$c" "$FLOOR" "$PROJ/scripts/post_floor.lua"
    one project "http://127.0.0.1:$APIP/api/v1/verification/runs" "$c" "$API" "$W/proj.lua"
  done
done | tee "$W/lines"
side_ratios "$W/lines"
