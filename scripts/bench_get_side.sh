#!/usr/bin/env bash
# GET /runs/{id} side by side with its floor, in one run, on one Redis, with the same wrk (-t1):
#   floor   = scripts/get_floor_app.py /runs/{key} (FastAPI: one Redis GET, the bytes back)
#   project = the project's GET /api/v1/verification/runs/{id} (`echelon api`), every check on
# usage (from the project root):   bash scripts/bench_get_side.sh [seconds]
# Needs: wrk (Debian package), PostgreSQL and Redis on loopback (5432/6379; a throwaway database and Redis db 7
# are used and removed), the project's .venv (or PY=/path/to/python) with its nats-server.
# Prints one JSON line per measurement, then one line per concurrency with the project/floor ratios.
# The run is created with POST and projected by `echelon coordinator` (stopped before measuring), so both
# apps read the same read-model record.
set -euo pipefail
SECS=${1:-8}
source "$(dirname "$0")/_side.sh"
side_start getside
RUN=$(curl -sf -X POST "http://127.0.0.1:$APIP/api/v1/verification/runs" -H "Authorization: Bearer $TOK" \
  -H 'Content-Type: application/json' \
  -d '{"repo_url":"https://github.com/acme/widgets","construct_id":"bench","oracle_type":"python","oracle_module":"pipeline_workers.oracles.sample","oracle_callable":"summarise","limit":10}' \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["run_id"])')
("$PY" -m echelon.cli coordinator >"$W/coord.log" 2>&1) & COORD=$!; pids+=($COORD)
NS=live
for _ in $(seq 300); do
  NS=$(redis-cli -n 7 get "${DB}:ns"); NS=${NS:-live}
  [ -n "$(redis-cli -n 7 get "${DB}:${NS}:run:$RUN")" ] && break; sleep 0.1
done
kill "$COORD" 2>/dev/null || true; wait "$COORD" 2>/dev/null || true
[ -n "$(redis-cli -n 7 get "${DB}:${NS}:run:$RUN")" ] || { echo "run $RUN was not projected" >&2; exit 1; }
(cd "$PROJ/scripts" && BENCH_REDIS_URL=redis://127.0.0.1:6379/7 BENCH_KEY_PREFIX="${DB}:${NS}:run:" exec \
  "$PY" -m uvicorn get_floor_app:app --host 127.0.0.1 --port "$RAWP" --workers 1 --log-level warning \
  --no-access-log) & FLOOR=$!; pids+=($FLOOR)
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$RAWP/" >/dev/null 2>&1 && break; sleep 0.2; done
printf "wrk.headers['Authorization'] = 'Bearer %s'\n" "$TOK" >"$W/proj.lua"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$RAWP/runs/$RUN")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOK" \
  "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN")" = 200 ]
wrk -t1 -c4 -d2s "http://127.0.0.1:$RAWP/runs/$RUN" >/dev/null
wrk -t1 -c4 -d2s -s "$W/proj.lua" "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN" >/dev/null
for c in 1 32; do
  for _ in 1 2; do
    one floor "http://127.0.0.1:$RAWP/runs/$RUN" "$c" "$FLOOR"
    one project "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN" "$c" "$API" "$W/proj.lua"
  done
done | tee "$W/lines"
side_ratios "$W/lines"
