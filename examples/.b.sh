#!/usr/bin/env bash
# Benchmark (not a test): the release `imcast` client alone against `imcast mock-server` as a separate
# process, throttle lifted, one shared Content. Prints the client's wall, CPU and peak RSS, and the mock's.
#
#   cargo build --release --locked
#   examples/bench_client.sh 1000000
#   WRAP="heaptrack -o /tmp/imcast-heap" examples/bench_client.sh 1000000   # where the client's memory goes
#   KEEP=1 examples/bench_client.sh 1000000   # keep the temp repo (state, reports) to look at
#   BIN=/tmp/imcast-old examples/bench_client.sh 1000000   # another build of imcast (a comparison)
#   PG=1 examples/bench_client.sh 1000000   # state in a throwaway PostgreSQL (examples/pg_cluster.sh,
#                                           # fsync on) through `[state] url`, instead of SQLite
#   PG=1 PG_URL=postgres://… examples/bench_client.sh 1000000   # that database instead (left running)
#   PG=1 PG_STATS=1 examples/bench_client.sh 1000000   # + the server's CPU, its costliest statements
#                                           # (pg_stat_statements) and how many row updates were HOT
#   PG=1 NO_MIGRATE=1 examples/bench_client.sh 1000000   # the run migrates the fresh store itself
#                                           # (by default `imcast state migrate` runs first, timed apart)
#   SPREAD=1000 examples/bench_client.sh 1000000   # two Contents: every 1000th recipient gets the other
#                                           # one (a small group spread thinly: its calls span far)
# Prints the state left per recipient too: the state database (imcast.db + -wal) / recipients.
set -euo pipefail
N=${1:-1000000}
BIN=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/imcast}
D=$(mktemp -d)
HERE=$(cd "$(dirname "$0")" && pwd)
trap 'kill "${MOCK:-}" 2>/dev/null || true; [ -z "${PG_DIR:-}" ] || "$HERE/pg_cluster.sh" stop "$PG_DIR"; [ -n "${KEEP:-}" ] || rm -rf "$D"' EXIT
cd "$D"
printf '[limits.batch]\nlimit = 1000000000\nwindow = "1s"\n[send]\nmax_requests_per_second = 1000000\nmax_batch_in_flight = %s\n' "${INFLIGHT:-8}" > imcast.toml
if [ -n "${PG:-}" ]; then
  if [ -z "${PG_URL:-}" ]; then
    [ -z "${PG_STATS:-}" ] || PG_OPTS="${PG_OPTS:-} -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
    eval "$(PG_OPTS="${PG_OPTS:-}" "$HERE/pg_cluster.sh" start)"
  fi
  printf '[state]\nurl = "%s"\n' "$PG_URL" >> imcast.toml
  # The store's schema first, as a team's server has it (`imcast state migrate`, once per upgrade, not
  # per run); its time is printed apart. NO_MIGRATE=1 leaves it to the run (a fresh store).
  if [ -z "${NO_MIGRATE:-}" ]; then
    /usr/bin/time -f "migrate (before the run): %e s wall" "$BIN" state migrate > /dev/null
  fi
  if [ -n "${PG_STATS:-}" ]; then
    psql "$PG_URL" -qc "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
    # the postmaster's CPU with its reaped backends' (clock ticks); only for a cluster started here
    [ -z "${PG_DIR:-}" ] || PM_TICKS=$(awk '{print $14+$15+$16+$17}' "/proc/$(head -1 "$PG_DIR/data/postmaster.pid")/stat")
  fi
  PG_EMPTY=$(psql "$PG_URL" -Atc "SELECT pg_database_size(current_database())")
fi
# ids above 2^53, written as text (awk numbers are doubles)
if [ -z "${SPREAD:-}" ]; then
  awk -v n="$N" 'BEGIN { print "user_id,name"; for (i = 0; i < n; i++) printf "90071993%08d,user%d\n", i, i }' > audience.csv
else
  awk -v n="$N" -v s="$SPREAD" 'BEGIN { print "user_id,name,lang"
    for (i = 0; i < n; i++) printf "90071993%08d,user%d,%s\n", i, i, (i % s == 0) ? "fr" : "en" }' > audience.csv
fi
"$BIN" mock-server --limit 1000000000 --window 1s -q > mock.out 2> mock.err &
MOCK=$!
for _ in $(seq 50); do [ -s mock.out ] && break; sleep 0.1; done
ADDR=$(head -1 mock.out)
TAIL=""
[ -z "${SPREAD:-}" ] || TAIL=' ({{ lang }})'
cat > bench.yaml <<YAML
version: 1
name: bench
provider: { app_id: 666675, region: cn-north-1, endpoint: "http://$ADDR" }
action: batch
sender: 10001
audience:
  csv: audience.csv
  id_column: user_id
message:
  type: text
  text: "Hello from {{ campaign.name }}: the spring sale starts Saturday.$TAIL"
YAML
VOLC_ACCESSKEY=AKLTmockaccesskey000000 VOLC_SECRETKEY=mock-secret-key-not-a-secret RUST_LOG=imcast=warn \
  ${WRAP:-/usr/bin/time -f "client: %e s wall, %U user %S sys, %M KB maxrss"} "$BIN" run bench.yaml --yes > /dev/null 2> ${ERR:-/dev/stderr}
grep VmHWM "/proc/$MOCK/status" | sed 's/^/mock /'
DB=$(find "$D" -name imcast.db | head -1)
if [ -n "${PG:-}" ]; then
  psql "$PG_URL" -qc CHECKPOINT
  BYTES=$(( $(psql "$PG_URL" -Atc "SELECT pg_database_size(current_database())") - PG_EMPTY ))
  echo "state: $BYTES bytes (PostgreSQL database growth, WAL not counted), $(awk -v b="$BYTES" -v n="$N" 'BEGIN { printf "%.1f", b / n }') bytes a recipient"
  if [ -n "${PG_STATS:-}" ]; then
    [ -z "${PM_TICKS:-}" ] || echo "server CPU: $(awk -v a="$PM_TICKS" -v b="$(awk '{print $14+$15+$16+$17}' "/proc/$(head -1 "$PG_DIR/data/postmaster.pid")/stat")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b - a) / hz }') s (user + sys, backends included)"
    psql "$PG_URL" -c "SELECT calls, round(total_exec_time) AS ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 70) AS statement
                        FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT ${PG_TOP:-8}" \
                   -c "SELECT n_tup_upd AS row_updates, n_tup_hot_upd AS hot FROM pg_stat_user_tables WHERE relname = 'recipients'"
  fi
elif [ -n "$DB" ]; then
  BYTES=$(( $(stat -c %s "$DB") + $( [ -f "$DB-wal" ] && stat -c %s "$DB-wal" || echo 0) ))
  echo "state: $BYTES bytes ($DB + -wal), $(awk -v b="$BYTES" -v n="$N" 'BEGIN { printf "%.1f", b / n }') bytes a recipient"
fi
