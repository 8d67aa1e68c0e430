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
PROJ=$(pwd); SYNC=${1:-always}; SECS=${2:-8}; ROUNDS=${3:-2}
PY=${PY:-$PROJ/.venv/bin/python}; BIN=$(dirname "$PY")
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NPORT=$(port); RAWP=$(port); APIP=$(port); DB=postside_$$
NATS_BIN=$BIN/nats-server; [ -x "$NATS_BIN" ] || NATS_BIN=$(command -v nats-server)
printf 'listen: 127.0.0.1:%s\nmax_payload: 1MB\njetstream { store_dir: "%s/js"\n%s }\n' "$NPORT" "$W" \
  "$([ "$SYNC" = always ] && echo '  sync_interval: always')" >"$W/nats.conf"
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
(cd "$PROJ/scripts" && BENCH_NATS_URL=$NATS_URL exec "$PY" -m uvicorn post_floor_app:app --host 127.0.0.1 \
  --port "$RAWP" --workers 1 --log-level warning --no-access-log) & FLOOR=$!; pids+=($FLOOR)
"$PY" -m echelon.cli migrate >/dev/null 2>&1 || true
("$PY" -m echelon.cli api >"$W/api.log" 2>&1) & pids+=($!)
for _ in $(seq 150); do
  curl -sf "http://127.0.0.1:$APIP/healthz" >/dev/null 2>&1 && curl -sf -o /dev/null "http://127.0.0.1:$RAWP/" && break
  sleep 0.2
done
API=$(ss -ltnpH "sport = :$APIP" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
TOK=$("$PY" -m echelon.cli token bench 2>/dev/null | tail -1)
cat >"$W/proj.lua" <<L
wrk.method = 'POST'
wrk.body = '{"repo_url":"https://github.com/acme/widgets","construct_id":"bench","oracle_type":"python","oracle_module":"pipeline_workers.oracles.sample","oracle_callable":"summarise","limit":10}'
wrk.headers['Content-Type'] = 'application/json'
wrk.headers['Authorization'] = 'Bearer $TOK'
L
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() {  # name url script conc pid
  before=$(cpu_ticks "$5")
  out=$(wrk -t1 -c"$4" -d"${SECS}s" --latency -s "$3" "$2")
  after=$(cpu_ticks "$5")
  p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}'); bad=$(echo "$out" | awk '/Non-2xx/{print $5}')
  n=$(echo "$out" | awk '/requests in/{print $1}')
  cpu=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))
  echo "{\"path\":\"$1\",\"sync\":\"$SYNC\",\"c\":$4,\"p50\":\"$p50\",\"p99\":\"$p99\",\"rps\":$rps,\"cpu_us\":$cpu,\"non2xx\":${bad:-0}}"
}
wrk -t1 -c4 -d2s -s "$PROJ/scripts/post_floor.lua" "http://127.0.0.1:$RAWP/events" >/dev/null
wrk -t1 -c4 -d2s -s "$W/proj.lua" "http://127.0.0.1:$APIP/api/v1/verification/runs" >/dev/null
for c in 1 32; do
  for _ in $(seq "$ROUNDS"); do
    one floor "http://127.0.0.1:$RAWP/events" "$PROJ/scripts/post_floor.lua" "$c" "$FLOOR"
    one project "http://127.0.0.1:$APIP/api/v1/verification/runs" "$W/proj.lua" "$c" "$API"
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
    print(json.dumps({"ratio": "project/floor", "sync": rows[0]["sync"], "c": c,
                      "p50": med(lambda fl, pr: ms(pr["p50"]) / ms(fl["p50"])),
                      "p99": med(lambda fl, pr: ms(pr["p99"]) / ms(fl["p99"])),
                      "rps": med(lambda fl, pr: pr["rps"] / fl["rps"]),
                      "cpu_us": med(lambda fl, pr: pr["cpu_us"] / max(fl["cpu_us"], 1))}))
P
