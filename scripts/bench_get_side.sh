#!/usr/bin/env bash
# GET /runs/{id} side by side with its floor, in one run, on one Redis, with the same wrk (-t1):
#   floor   = scripts/get_floor_app.py /runs/{key} (FastAPI: one Redis GET, the bytes back)
#   project = the project's GET /api/v1/verification/runs/{id} (`echelon api`), every check on
# usage (from the project root, after its .venv exists):   bash scripts/bench_get_side.sh [seconds]
# Needs: wrk (Debian package), the project's .venv with its nats-server, PostgreSQL and Redis on loopback
# (5432/6379; a throwaway database and Redis db 7 are used and removed). Prints one JSON line per measurement.
# The run is created with POST and projected by `echelon coordinator` (stopped before measuring), so both
# apps read the same read-model record.
set -euo pipefail
PROJ=$(pwd); SECS=${1:-8}
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NPORT=$(port); RAWP=$(port); APIP=$(port); DB=getside_$$
NATS_BIN=$PROJ/.venv/bin/nats-server; [ -x "$NATS_BIN" ] || NATS_BIN=$(command -v nats-server)
printf 'listen: 127.0.0.1:%s\nmax_payload: 1MB\njetstream { store_dir: "%s/js" }\n' "$NPORT" "$W" >"$W/nats.conf"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $DB" >/dev/null 2>&1 || true
  redis-cli -n 7 --scan --pattern "$DB:*" | xargs -r redis-cli -n 7 del >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
"$NATS_BIN" -c "$W/nats.conf" -l "$W/nats.log" & pids+=($!)
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.1; done
psql -q -h 127.0.0.1 -U postgres -c "create database $DB" >/dev/null
export PYTHONPATH=$PROJ NATS_URL=nats://127.0.0.1:$NPORT DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB \
  REDIS_URL=redis://127.0.0.1:6379/7 ECHELON_REDIS_PREFIX=$DB: ECHELON_JWT_SECRET=side-secret \
  ECHELON_API_PORT=$APIP ECHELON_RUNS_PER_MINUTE=1000000000
"$PROJ/.venv/bin/python" -m echelon.cli migrate >/dev/null 2>&1 || true
("$PROJ/.venv/bin/python" -m echelon.cli api >"$W/api.log" 2>&1) & pids+=($!)
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$APIP/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
TOK=$("$PROJ/.venv/bin/python" -m echelon.cli token bench 2>/dev/null | tail -1)
RUN=$(curl -sf -X POST "http://127.0.0.1:$APIP/api/v1/verification/runs" -H "Authorization: Bearer $TOK" \
  -H 'Content-Type: application/json' \
  -d '{"repo_url":"https://github.com/acme/widgets","construct_id":"bench","oracle_type":"python","oracle_module":"pipeline_workers.oracles.sample","oracle_callable":"summarise","limit":10}' \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["run_id"])')
("$PROJ/.venv/bin/python" -m echelon.cli coordinator >"$W/coord.log" 2>&1) & COORD=$!; pids+=($COORD)
NS=live
for _ in $(seq 300); do
  NS=$(redis-cli -n 7 get "${DB}:ns"); NS=${NS:-live}
  [ -n "$(redis-cli -n 7 get "${DB}:${NS}:run:$RUN")" ] && break; sleep 0.1
done
kill "$COORD" 2>/dev/null || true; wait "$COORD" 2>/dev/null || true
[ -n "$(redis-cli -n 7 get "${DB}:${NS}:run:$RUN")" ] || { echo "run $RUN was not projected" >&2; exit 1; }
(cd "$PROJ/scripts" && BENCH_REDIS_URL=redis://127.0.0.1:6379/7 BENCH_KEY_PREFIX="${DB}:${NS}:run:" exec \
  "$PROJ/.venv/bin/uvicorn" get_floor_app:app --host 127.0.0.1 --port "$RAWP" --workers 1 --log-level warning \
  --no-access-log) & pids+=($!)
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$RAWP/" >/dev/null 2>&1 && break; sleep 0.2; done
printf "wrk.headers['Authorization'] = 'Bearer %s'\n" "$TOK" >"$W/proj.lua"
one() {  # name url conc [script]
  out=$(wrk -t1 -c"$3" -d"${SECS}s" --latency ${4:+-s "$4"} "$2")
  p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}'); bad=$(echo "$out" | awk '/Non-2xx/{print $5}')
  echo "{\"path\":\"$1\",\"c\":$3,\"p50\":\"$p50\",\"p99\":\"$p99\",\"rps\":$rps,\"non2xx\":${bad:-0}}"
}
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$RAWP/runs/$RUN")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOK" \
  "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN")" = 200 ]
wrk -t1 -c4 -d2s "http://127.0.0.1:$RAWP/runs/$RUN" >/dev/null
wrk -t1 -c4 -d2s -s "$W/proj.lua" "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN" >/dev/null
for c in 1 32; do
  for _ in 1 2; do
    one floor "http://127.0.0.1:$RAWP/runs/$RUN" "$c"
    one project "http://127.0.0.1:$APIP/api/v1/verification/runs/$RUN" "$c" "$W/proj.lua"
  done
done
