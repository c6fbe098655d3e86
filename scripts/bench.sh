#!/usr/bin/env bash
# Sweep benchmark: whole sweeps of the release binary against N accounts loaded by plain
# SQL (as the bank's systems would), on a SQLite file and on PostgreSQL.
#
#   scripts/bench.sh [N ...]          default: 10000 100000 1000000
#
# For each N and backend it reports: the first sweep (console channel to a file, 10% of the
# accounts below the threshold), the immediate re-sweep (everything in cooldown), peak RSS
# of the process (/usr/bin/time -v), and the bare-SQL baseline: the same database work done
# by hand in one transaction with sqlite3/psql (anti-join select, insert the alert_logs rows,
# mark them sent). PostgreSQL: $BALANCE_ALERT_TEST_PG_URL or a throwaway server (scripts/pg.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10000 100000 1000000)

cargo build --release --locked -q
BIN=$PWD/target/release/balance-alertd
WORK=$(mktemp -d /tmp/balance-alert-bench.XXXXXX)
trap 'rm -rf "$WORK"; [[ -n "${PG_TEST_ROOT:-}" ]] && scripts/pg.sh stop "$PG_TEST_ROOT"' EXIT
if [[ -z "${BALANCE_ALERT_TEST_PG_URL:-}" ]]; then eval "$(scripts/pg.sh start)"; fi
PG_ADMIN=$BALANCE_ALERT_TEST_PG_URL

# Runs the binary; prints "wall_s max_rss_mb summary-json".
measure() {
  local out=$WORK/out.txt tv=$WORK/time.txt
  /usr/bin/time -v "$BIN" -c "$WORK/config.toml" sweep --json >"$out" 2>"$tv"
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {split($2,t,":"); s=0; for(i=1;i<=length(t);i++) s=s*60+t[i]; print s}' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$tv")
  echo "$wall $rss $(tail -n 1 "$out")"
}

sqlite_load() {
  local db=$1 n=$2
  sqlite3 "$db" <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < $n)
INSERT INTO accounts (id, owner_email, owner_name, balance_minor)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-a'
             || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
       'owner' || i || '@example.com', 'Owner ' || i,
       CASE WHEN i % 10 = 0 THEN abs(random()) % 5000 ELSE 5000 + abs(random()) % 1000000 END
FROM seq;
COMMIT;
ANALYZE;
SQL
}

pg_load() {
  local url=$1 n=$2
  psql -q -v ON_ERROR_STOP=1 "$url" <<SQL
INSERT INTO accounts (id, owner_email, owner_name, balance_minor)
SELECT gen_random_uuid()::text, 'owner' || i || '@example.com', 'Owner ' || i,
       CASE WHEN i % 10 = 0 THEN floor(random() * 5000)::bigint ELSE 5000 + floor(random() * 1000000)::bigint END
FROM generate_series(0, $n - 1) AS i;
VACUUM ANALYZE accounts;
SQL
}

# The practical floor: the sweep's database work as one hand-written transaction.
BASELINE_SQL="
INSERT INTO alert_logs (id, account_id, channel, threshold_minor, balance_at_alert_minor, status, attempts, created_at, claimed_at)
SELECT %UUID%, a.id, 'console', COALESCE(a.alert_threshold_minor, 5000), a.balance_minor, 'pending', 0, %NOW%, %NOW%
FROM accounts a
WHERE a.balance_minor < COALESCE(a.alert_threshold_minor, 5000)
  AND NOT EXISTS (SELECT 1 FROM alert_logs l WHERE l.account_id = a.id AND l.channel = 'console'
                  AND (l.status <> 'sent' OR l.sent_at >= %CUTOFF%));
UPDATE alert_logs SET status = 'sent', sent_at = %NOW%, attempts = 1 WHERE status = 'pending';"

baseline() {
  local backend=$1 target=$2 start end sql uuid now cutoff
  if [[ $backend == sqlite ]]; then
    uuid="lower(hex(randomblob(16)))"
    now="strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    cutoff="strftime('%Y-%m-%dT%H:%M:%fZ','now','-1 day')"
  else
    uuid="gen_random_uuid()::text"; now="now()"; cutoff="now() - interval '1 day'"
  fi
  sql=${BASELINE_SQL//%UUID%/$uuid}; sql=${sql//%NOW%/$now}; sql=${sql//%CUTOFF%/$cutoff}
  start=$(date +%s.%N)
  if [[ $backend == sqlite ]]; then
    sqlite3 "$target" "PRAGMA synchronous=NORMAL; BEGIN; $sql COMMIT;" >/dev/null
  else
    psql -q -v ON_ERROR_STOP=1 "$target" -c "BEGIN; $sql COMMIT;" >/dev/null
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

printf '%-8s %9s %9s %14s %10s %10s %12s %9s\n' backend accounts eligible first_sweep_s deliv/s resweep_s peak_rss_mb bare_sql_s
for n in "${SIZES[@]}"; do
  for backend in sqlite postgres; do
    if [[ $backend == sqlite ]]; then
      rm -f "$WORK"/bench.db*; url="sqlite://$WORK/bench.db?mode=rwc"
    else
      name="bench_$n"; psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name"
      url="${PG_ADMIN%/*}/$name"
    fi
    printf '[database]\nurl = "%s"\n[log]\ndir = "%s/logs"\n[notify]\nconcurrency = 64\n' "$url" "$WORK" >"$WORK/config.toml"
    "$BIN" -c "$WORK/config.toml" migrate >/dev/null
    if [[ $backend == sqlite ]]; then sqlite_load "$WORK/bench.db" "$n"; else pg_load "$url" "$n"; fi
    read -r wall1 rss1 json1 < <(measure)
    read -r wall2 rss2 _ < <(measure)
    sent=$(echo "$json1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sent"])')
    # Baseline on a fresh copy of the same data: reset the alert log first.
    if [[ $backend == sqlite ]]; then sqlite3 "$WORK/bench.db" "DELETE FROM alert_logs; VACUUM;"; base=$(baseline sqlite "$WORK/bench.db")
    else psql -q "$url" -c "TRUNCATE alert_logs" -c "VACUUM ANALYZE alert_logs"; base=$(baseline postgres "$url"); fi
    rate=$(echo "$sent / $wall1" | bc)
    peak=$(echo "if ($rss1 > $rss2) $rss1 else $rss2" | bc)
    printf '%-8s %9s %9s %14s %10s %10s %12s %9.3f\n' "$backend" "$n" "$sent" "$wall1" "$rate" "$wall2" "$peak" "$base"
    rm -rf "$WORK/logs"
  done
done
