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
PROJ=$(pwd); SECS=${1:-8}
PY=${PY:-$PROJ/.venv/bin/python}; BIN=$(dirname "$PY")
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NPORT=$(port); RAWP=$(port); APIP=$(port); DB=getside_$$
NATS_BIN=$BIN/nats-server; [ -x "$NATS_BIN" ] || NATS_BIN=$(command -v nats-server)
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
"$PY" -m echelon.cli migrate >/dev/null 2>&1 || true
("$PY" -m echelon.cli api >"$W/api.log" 2>&1) & pids+=($!)
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$APIP/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
TOK=$("$PY" -m echelon.cli token bench 2>/dev/null | tail -1)
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
API=$(ss -ltnpH "sport = :$APIP" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
printf "wrk.headers['Authorization'] = 'Bearer %s'\n" "$TOK" >"$W/proj.lua"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() {  # name url conc pid [script]
  before=$(cpu_ticks "$4")
  out=$(wrk -t1 -c"$3" -d"${SECS}s" --latency ${5:+-s "$5"} "$2")
  after=$(cpu_ticks "$4")
  n=$(echo "$out" | awk '/requests in/{print $1}')
  cpu=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))
  p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}'); bad=$(echo "$out" | awk '/Non-2xx/{print $5}')
  echo "{\"path\":\"$1\",\"c\":$3,\"p50\":\"$p50\",\"p99\":\"$p99\",\"rps\":$rps,\"cpu_us\":$cpu,\"non2xx\":${bad:-0}}"
}
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
python3 - "$W/lines" <<'P'
import json, statistics, sys
def ms(v):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
rows = [json.loads(line) for line in open(sys.argv[1])]
for c in sorted({r["c"] for r in rows}):
    pairs = list(zip([r for r in rows if r["c"] == c and r["path"] == "floor"],
                     [r for r in rows if r["c"] == c and r["path"] == "project"]))
    med = lambda f: round(statistics.median(f(fl, pr) for fl, pr in pairs), 2)
    print(json.dumps({"ratio": "project/floor", "c": c,
                      "p50": med(lambda fl, pr: ms(pr["p50"]) / ms(fl["p50"])),
                      "p99": med(lambda fl, pr: ms(pr["p99"]) / ms(fl["p99"])),
                      "rps": med(lambda fl, pr: pr["rps"] / fl["rps"]),
                      "cpu_us": med(lambda fl, pr: pr["cpu_us"] / max(fl["cpu_us"], 1))}))
P
