# Shared by scripts/bench_*_side.sh: one nats-server, a throwaway database and Redis db 7 on the loopback
# PostgreSQL and Redis, the project's `echelon api`, wrk runs with each server's CPU per request, and the
# project/floor ratios. Source it, then call `side_start NAME [nats jetstream line]`.

PROJ=$(pwd)
PY=${PY:-$PROJ/.venv/bin/python}; BIN=$(dirname "$PY")
W=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
NPORT=$(port); RAWP=$(port); APIP=$(port)
NATS_BIN=$BIN/nats-server; [ -x "$NATS_BIN" ] || NATS_BIN=$(command -v nats-server)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $DB" >/dev/null 2>&1 || true
  redis-cli -n 7 --scan --pattern "$DB:*" | xargs -r redis-cli -n 7 del >/dev/null 2>&1 || true
  rm -rf "$W"
}

# side_start NAME [JETSTREAM_LINE]: servers up, the API serving; sets DB, API (its pid) and TOK.
side_start() {
  DB=${1}_$$
  trap cleanup EXIT
  printf 'listen: 127.0.0.1:%s\nmax_payload: 1MB\njetstream { store_dir: "%s/js"\n%s }\n' "$NPORT" "$W" \
    "${2:-}" >"$W/nats.conf"
  "$NATS_BIN" -c "$W/nats.conf" -l "$W/nats.log" & pids+=($!)
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$NPORT) 2>/dev/null && break; sleep 0.1; done
  psql -q -h 127.0.0.1 -U postgres -c "create database $DB" >/dev/null
  export PYTHONPATH=$PROJ NATS_URL=nats://127.0.0.1:$NPORT \
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$DB REDIS_URL=redis://127.0.0.1:6379/7 \
    ECHELON_REDIS_PREFIX=$DB: ECHELON_JWT_SECRET=side-secret ECHELON_API_PORT=$APIP \
    ECHELON_RUNS_PER_MINUTE=1000000000
  "$PY" -m echelon.cli migrate >/dev/null 2>&1 || true
  ("$PY" -m echelon.cli api >"$W/api.log" 2>&1) & pids+=($!)
  for _ in $(seq 150); do curl -sf "http://127.0.0.1:$APIP/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  API=$(ss -ltnpH "sport = :$APIP" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  TOK=$("$PY" -m echelon.cli token bench 2>/dev/null | tail -1)
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# one NAME URL CONCURRENCY PID [WRK_SCRIPT]: one JSON line (latency, req/s, the server's CPU per request).
one() {
  local before after out n cpu p50 p99 rps bad
  before=$(cpu_ticks "$4")
  out=$(wrk -t1 -c"$3" -d"${SECS}s" --latency ${5:+-s "$5"} "$2")
  after=$(cpu_ticks "$4")
  n=$(echo "$out" | awk '/requests in/{print $1}')
  cpu=$(( (after - before) * 1000000 / $(getconf CLK_TCK) / (n > 0 ? n : 1) ))
  p50=$(echo "$out" | awk '$1=="50%"{print $2}'); p99=$(echo "$out" | awk '$1=="99%"{print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}'); bad=$(echo "$out" | awk '/Non-2xx/{print $5}')
  echo "{\"path\":\"$1\",${SYNC:+\"sync\":\"$SYNC\",}\"c\":$3,\"p50\":\"$p50\",\"p99\":\"$p99\",\"rps\":$rps,\"cpu_us\":$cpu,\"non2xx\":${bad:-0}}"
}

# side_ratios LINES: per concurrency, the medians over the rounds of project/floor.
side_ratios() {
  python3 - "$1" <<'P'
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
    sync = {"sync": rows[0]["sync"]} if "sync" in rows[0] else {}
    print(json.dumps({"ratio": "project/floor", **sync, "c": c,
                      "p50": med(lambda fl, pr: ms(pr["p50"]) / ms(fl["p50"])),
                      "p99": med(lambda fl, pr: ms(pr["p99"]) / ms(fl["p99"])),
                      "rps": med(lambda fl, pr: pr["rps"] / fl["rps"]),
                      "cpu_us": med(lambda fl, pr: pr["cpu_us"] / max(fl["cpu_us"], 1))}))
P
}
