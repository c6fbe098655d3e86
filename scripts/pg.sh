#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL server for the test suite and benchmarks.
#
#   eval "$(scripts/pg.sh start)"   # prints: export BALANCE_ALERT_TEST_PG_URL=...; export PG_TEST_ROOT=...
#   scripts/pg.sh stop "$PG_TEST_ROOT"
#   scripts/pg.sh pause ROOT / resume ROOT   # stop and restart the server, keeping its data
#
# The tests' server trades durability for speed (fsync, synchronous_commit and
# full_page_writes off). PG_DURABLE=1 starts one configured as production servers are
# (PostgreSQL's defaults: every commit waits for its WAL flush); the benchmark measures both.
#
# Works as root (initdb and postgres refuse to run as root, so they run as the `postgres`
# system user, created if missing) and as an ordinary user. Finds the server binaries with
# `pg_config --bindir` or under /usr/lib/postgresql/*/bin. Exits 3 if there are none.
set -euo pipefail

find_bindir() {
  local dir
  if [[ -n "${PG_BINDIR:-}" && -x "$PG_BINDIR/initdb" ]]; then echo "$PG_BINDIR"; return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [[ -x "$dir/initdb" ]]; then echo "$dir"; return 0; fi
  fi
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$dir/initdb" ]]; then echo "$dir"; return 0; fi
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# The durability flags, remembered in ROOT so that `resume` restarts the same kind of server.
server_flags() { # ROOT
  if [[ ! -f "$1/durable" && "${PG_DURABLE:-}" == 1 ]]; then touch "$1/durable"; fi
  if [[ -f "$1/durable" ]]; then echo "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  else echo "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"; fi
}

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bindir root port
  bindir=$(find_bindir) || { echo "pg.sh: PostgreSQL server binaries not found (tried pg_config, /usr/lib/postgresql/*/bin)" >&2; exit 3; }
  root=$(mktemp -d /tmp/balance-alert-pg.XXXXXX)
  port=${PG_TEST_PORT:-$(free_port)}
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --user-group --shell /bin/bash postgres
    chown postgres:postgres "$root"
  fi
  chmod 0700 "$root"
  (cd "$root" && as_pg "$bindir/initdb" -D "$root/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$root/initdb.log" 2>&1) \
    || { echo "pg.sh: initdb failed:" >&2; cat "$root/initdb.log" >&2; exit 1; }
  (cd "$root" && as_pg "$bindir/pg_ctl" -D "$root/data" -l "$root/pg.log" -w -t 60 \
    -o "-p $port -k $root -c listen_addresses=127.0.0.1 $(server_flags "$root") -c max_connections=300" start >/dev/null) \
    || { echo "pg.sh: server did not start:" >&2; cat "$root/pg.log" >&2; exit 1; }
  echo "$port" >"$root/port"
  echo "export BALANCE_ALERT_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/postgres"
  echo "export PG_TEST_ROOT=$root"
  echo "export PG_TEST_BINDIR=$bindir"
}

stop() {
  local root=${1:?usage: pg.sh stop ROOT} bindir
  bindir=${PG_TEST_BINDIR:-$(find_bindir)}
  if [[ -d "$root/data" ]]; then
    (cd "$root" && as_pg "$bindir/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null 2>&1) || true
  fi
  rm -rf "$root"
}

pause() {
  local root=${1:?usage: pg.sh pause ROOT} bindir
  bindir=${PG_TEST_BINDIR:-$(find_bindir)}
  (cd "$root" && as_pg "$bindir/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null)
}

resume() {
  local root=${1:?usage: pg.sh resume ROOT} bindir port
  bindir=${PG_TEST_BINDIR:-$(find_bindir)}
  port=$(cat "$root/port")
  (cd "$root" && as_pg "$bindir/pg_ctl" -D "$root/data" -l "$root/pg.log" -w -t 60 \
    -o "-p $port -k $root -c listen_addresses=127.0.0.1 $(server_flags "$root") -c max_connections=300" start >/dev/null)
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  pause) shift; pause "$@" ;;
  resume) shift; resume "$@" ;;
  *) echo "usage: $0 start | stop ROOT | pause ROOT | resume ROOT" >&2; exit 2 ;;
esac
