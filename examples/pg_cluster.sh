#!/usr/bin/env bash
# A throwaway PostgreSQL for benchmarks and demos (not used by the tests, which start their own):
# `initdb` in a temp folder, listening on 127.0.0.1 only on a free port, default durability (fsync
# and synchronous commit ON, as a team's server would have, unlike the tests' cluster).
#
#   eval "$(examples/pg_cluster.sh start)"   # sets PG_DIR and PG_URL (postgres://postgres@127.0.0.1:PORT/imcast)
#   examples/pg_cluster.sh stop "$PG_DIR"
#   PG_OPTS="-c synchronous_commit=off" examples/pg_cluster.sh start   # server settings (an experiment)
# As root it runs PostgreSQL as the `postgres` user (PostgreSQL refuses root).
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$BIN" ] || BIN=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-}" in
start)
  D=$(mktemp -d /tmp/imcast-bench-pg-XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$D"
  as_pg "$BIN/initdb" -D "$D/data" --auth=trust -U postgres >"$D/initdb.log" 2>&1
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  as_pg "$BIN/pg_ctl" -D "$D/data" -l "$D/log" -w \
    -o "-p $PORT -k $D -c listen_addresses=127.0.0.1 ${PG_OPTS:-}" start >/dev/null
  as_pg psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "CREATE DATABASE imcast" postgres
  echo "PG_DIR=$D; PG_PORT=$PORT; PG_URL=postgres://postgres@127.0.0.1:$PORT/imcast"
  ;;
stop)
  as_pg "$BIN/pg_ctl" -D "$2/data" -m fast stop >/dev/null 2>&1 || true
  [ -n "${PG_KEEP:-}" ] && cp "$2/log" "$PG_KEEP" 2>/dev/null; rm -rf "$2"
  ;;
*) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
