#!/usr/bin/env bash
# The performance benchmark (README "Performance"): whole sweeps of the release binary
# against N accounts loaded by plain SQL, as the bank's systems would load them, on a SQLite
# file and on PostgreSQL.
#
#   scripts/bench.sh [N ...]          default: 10000 100000 1000000
#   BENCH_RUNS=5 scripts/bench.sh     sweeps and baselines per size and backend (default 3;
#                                     this shared 2-core VM varies by up to 30% run to run)
#
#   BENCH_BACKENDS="sqlite postgres"  a subset of: sqlite postgres pg-durable (default: all)
#   BENCH_SCENARIO=once               default | once (alert.policy = "once") | quiet10 (10% of
#                                     the accounts, ids below '1a', with their own time zone
#                                     and quiet hours, outside the window when measured) |
#                                     currency10 (10% in EUR, ids from 'e6', with
#                                     alert.thresholds.EUR = "50.00", and 10%, ids below '1a',
#                                     with their own channel list "console") |
#                                     history30 (before every run, each account below the
#                                     threshold has 30 alerts sent, one a day, the last 25 h
#                                     ago, written oldest first as a month of sweeps would:
#                                     the first sweep is a day's, the re-sweep reads past a
#                                     month of history; SQLite and PostgreSQL only)
#
# For each N and backend (10% of the accounts below the 50.00 threshold, random UUID ids):
#   first_s     first sweep, console channel to /dev/null
#   deliv/s     its deliveries per second
#   resweep_s   the immediate re-sweep (everything in cooldown)
#   rss_mb      peak RSS of the sweep process (/usr/bin/time -v)
#   bare_sql_s  the same database work by hand in ONE transaction with sqlite3/psql (select
#               the eligible accounts with an anti-join, insert their alert_logs rows, mark
#               them sent): the practical floor
#   ratio       first_s / bare_sql_s
#   webhook/s   end-to-end webhook deliveries per second to a fast local HTTP receiver
#               (keep-alive), notify.concurrency = 64
# and, at the largest N, the daemon's start-up to READY=1 and idle RSS.
# PostgreSQL: $BALANCE_ALERT_TEST_PG_URL, or a throwaway server (scripts/pg.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10000 100000 1000000)
PORT=${BENCH_RECEIVER_PORT:-18080}
RUNS=${BENCH_RUNS:-3}
READY_LINES=(); RUN_LINES=()

cargo build --release --locked -q
cargo build --release --locked -q --example bench_receiver
# Wherever cargo puts its output ($CARGO_TARGET_DIR, a workspace setting): cargo knows.
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release/balance-alertd
RECEIVER=$TARGET_DIR/release/examples/bench_receiver
WORK=$(mktemp -d /tmp/balance-alert-bench.XXXXXX)
cleanup() {
  rm -rf "$WORK"
  if [[ -n "${PG_TEST_ROOT:-}" ]]; then scripts/pg.sh stop "$PG_TEST_ROOT"; fi
  if [[ -n "${DURABLE_ROOT:-}" ]]; then scripts/pg.sh stop "$DURABLE_ROOT"; fi
}
trap cleanup EXIT
if [[ -z "${BALANCE_ALERT_TEST_PG_URL:-}" ]]; then eval "$(scripts/pg.sh start)"; fi
PG_ADMIN=$BALANCE_ALERT_TEST_PG_URL
# pg-durable: a second, throwaway server with production durability (every commit waits for
# its WAL flush to disk), where the number of commits a sweep makes is what costs.
BACKENDS=(${BENCH_BACKENDS:-sqlite postgres pg-durable})
if [[ " ${BACKENDS[*]} " == *" pg-durable "* ]]; then
  DURABLE_ENV=$(PG_DURABLE=1 scripts/pg.sh start)
  DURABLE_ROOT=$(sed -n 's/^export PG_TEST_ROOT=//p' <<<"$DURABLE_ENV")
  DURABLE_ADMIN=$(sed -n 's/^export BALANCE_ALERT_TEST_PG_URL=//p' <<<"$DURABLE_ENV")
fi

SCENARIO=${BENCH_SCENARIO:-default}
case $SCENARIO in
  default | quiet10 | history30) POLICY_TOML="" ;;
  currency10) POLICY_TOML=$'[alert.thresholds]\nEUR = "50.00"' ;;
  once) POLICY_TOML=$'[alert]\npolicy = "once"' ;;
  *) echo "bench: unknown BENCH_SCENARIO=$SCENARIO" >&2; exit 2 ;;
esac

config() { # URL [extra toml]
  printf '[database]\nurl = "%s"\n[log]\ndir = "%s/logs"\n%s\n%s\n' "$1" "$WORK" "$POLICY_TOML" "${2:-}" >"$WORK/config.toml"
}

# quiet10: a window that is not open now (so the same deliveries are made) in a zone of
# their own, on ~10% of the accounts (random ids below '1a': 1/16 + 10/256).
# currency10: the same deliveries, with the currency and channel-list columns filled in.
CURRENCY_SQL="UPDATE accounts SET currency = 'EUR' WHERE id >= 'e6'; UPDATE accounts SET alert_channels = 'console' WHERE id < '1a'"
# history30: alert ids '0000000N' + the account id's tail, unique per account and day.
SQLITE_HISTORY_SQL="WITH RECURSIVE d(n) AS (SELECT 30 UNION ALL SELECT n - 1 FROM d WHERE n > 1)
INSERT INTO alert_logs (id, account_id, channel, threshold_minor, balance_at_alert_minor, status, attempts, created_at, claimed_at, sent_at)
SELECT printf('%08x', n) || substr(a.id, 9), a.id, 'console', 5000, a.balance_minor, 'sent', 1, ts, ts, ts
FROM (SELECT n, strftime('%Y-%m-%dT%H:%M:%S.000000+00:00', 'now', '-' || (n - 1) || ' days', '-25 hours') AS ts FROM d) h,
     (SELECT id, balance_minor FROM accounts WHERE alert_threshold_minor IS NULL AND balance_minor < 5000) a
ORDER BY n DESC, a.id"
PG_HISTORY_SQL="INSERT INTO alert_logs (id, account_id, channel, threshold_minor, balance_at_alert_minor, status, attempts, created_at, claimed_at, sent_at)
SELECT lpad(to_hex(n), 8, '0') || substr(a.id, 9), a.id, 'console', 5000, a.balance_minor, 'sent', 1, ts, ts, ts
FROM (SELECT n, now() - (n - 1) * interval '1 day' - interval '25 hours' AS ts FROM generate_series(30, 1, -1) AS n) h,
     (SELECT id, balance_minor FROM accounts WHERE alert_threshold_minor IS NULL AND balance_minor < 5000) a
ORDER BY n DESC, a.id"
QUIET_SQL="UPDATE accounts SET timezone = 'Asia/Kolkata', quiet_hours = '$(TZ=Asia/Kolkata date -d '+6 hour' +%H:00)-$(TZ=Asia/Kolkata date -d '+7 hour' +%H:00)' WHERE id < '1a'"


# Runs one sweep with its stdout (the console channel's alerts, the summary) going to
# STDOUT (default /dev/null, as the performance issue specifies); prints "wall_s max_rss_mb".
measure() { # [STDOUT]
  local out=${1:-/dev/null} tv=$WORK/time.txt wall rss
  /usr/bin/time -v "$BIN" -c "$WORK/config.toml" sweep --json >"$out" 2>"$tv"
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$tv")
  echo "$wall $rss"
}

# Alerts marked sent so far (the console output went to /dev/null).
count_sent() { # backend target
  local sql="SELECT count(*) FROM alert_logs WHERE status = 'sent' AND id NOT LIKE '0000%'"
  if [[ $1 == sqlite ]]; then sqlite3 "$2" "$sql"; else psql -Atq "$2" -c "$sql"; fi
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {printf "%.2f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$2"; }

sqlite_load() {
  sqlite3 "$1" >/dev/null <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < $2)
INSERT INTO accounts (id, owner_email, owner_name, balance_minor)
SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-a'
             || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
       'owner' || i || '@example.com', 'Owner ' || i,
       CASE WHEN i % 10 = 0 THEN abs(random()) % 5000 ELSE 5000 + abs(random()) % 1000000 END
FROM seq;
COMMIT;
ANALYZE;
-- Every run starts from the same compact file: the runs after the first, and the bare-SQL
-- baseline, follow reset_alerts, whose VACUUM rebuilds the indexes the random-id load left
-- half-filled.
VACUUM;
SQL
}

pg_load() {
  psql -q -v ON_ERROR_STOP=1 "$1" <<SQL
INSERT INTO accounts (id, owner_email, owner_name, balance_minor)
SELECT gen_random_uuid()::text, 'owner' || i || '@example.com', 'Owner ' || i,
       CASE WHEN i % 10 = 0 THEN floor(random() * 5000)::bigint ELSE 5000 + floor(random() * 1000000)::bigint END
FROM generate_series(0, $2 - 1) AS i;
CHECKPOINT;
VACUUM ANALYZE accounts;
CHECKPOINT;
SQL
  # The sweep's candidate scan is index-only where the visibility map says a page is
  # all-visible. The throwaway server runs with synchronous_commit=off, and VACUUM cannot mark
  # rows all-visible until their commit is flushed: the CHECKPOINT before VACUUM does that
  # (a server with synchronous commit needs nothing). Without it the map stayed empty and the
  # re-sweep read the heap for every candidate (0.45 s instead of 0.26 s at 1M accounts).
  local visible
  visible=$(psql -Atq "$1" -c "SELECT relallvisible = relpages FROM pg_class WHERE relname = 'accounts'")
  [[ $visible == t ]] || echo "bench: accounts is not all-visible after VACUUM; index-only scans will read the heap" >&2
}

reset_alerts() { # backend target
  if [[ $1 == sqlite ]]; then sqlite3 "$2" "DELETE FROM alert_logs; VACUUM;"
  else psql -q "$2" -c "TRUNCATE alert_logs" -c "VACUUM ANALYZE alert_logs" -c "CHECKPOINT"; fi
  if [[ $SCENARIO == history30 ]]; then
    if [[ $1 == sqlite ]]; then sqlite3 "$2" "$SQLITE_HISTORY_SQL; PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
    else psql -q "$2" -c "$PG_HISTORY_SQL" -c "CHECKPOINT" -c "VACUUM ANALYZE alert_logs" -c "CHECKPOINT"; fi
  fi
}

# The sweep's database work by hand, in one transaction, with the same schema (foreign keys
# enforced) and the same predicates the partial indexes serve.
BASELINE_SQL="
INSERT INTO alert_logs (id, account_id, channel, threshold_minor, balance_at_alert_minor, status, attempts, created_at, claimed_at)
SELECT %UUID%, a.id, 'console', COALESCE(a.alert_threshold_minor, 5000), a.balance_minor, 'pending', 0, %NOW%, %NOW%
FROM accounts a
WHERE ((a.alert_threshold_minor IS NULL AND a.balance_minor < 5000)
       OR (a.alert_threshold_minor IS NOT NULL AND a.balance_minor < a.alert_threshold_minor))
  AND NOT EXISTS (SELECT 1 FROM alert_logs l WHERE l.account_id = a.id AND l.channel = 'console'
                  AND (l.status <> 'sent' OR l.sent_at >= %CUTOFF%));
UPDATE alert_logs SET status = 'sent', sent_at = %NOW%, attempts = 1 WHERE status = 'pending';"

baseline() { # backend target -> seconds
  local uuid now cutoff sql start end
  if [[ $1 == sqlite ]]; then
    uuid="lower(hex(randomblob(16)))"; now="strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    cutoff="strftime('%Y-%m-%dT%H:%M:%fZ','now','-1 day')"
  else
    uuid="gen_random_uuid()::text"; now="now()"; cutoff="now() - interval '1 day'"
  fi
  sql=${BASELINE_SQL//%UUID%/$uuid}; sql=${sql//%NOW%/$now}; sql=${sql//%CUTOFF%/$cutoff}
  start=$(date +%s.%N)
  if [[ $1 == sqlite ]]; then
    sqlite3 "$2" "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL; BEGIN; $sql COMMIT;" >/dev/null
  else
    # Freshly truncated, alert_logs has no statistics: without this the planner probes it
    # with a nested-loop sequential scan of the rows being inserted (56 s at 1M).
    psql -q -v ON_ERROR_STOP=1 "$2" -c "BEGIN; SET LOCAL enable_nestloop = off; $sql COMMIT;" >/dev/null
  fi
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

webhook() { # -> deliveries per second (and checks the receiver saw every one)
  local fifo=$WORK/receiver.in out=$WORK/receiver.out
  rm -f "$fifo"; mkfifo "$fifo"
  "$RECEIVER" "$PORT" <"$fifo" >"$out" &
  local receiver=$!
  exec 7>"$fifo"
  sleep 0.3
  local extra="[notify]\nchannels = [\"webhook\"]\nconcurrency = 64\n[notify.webhook]\nurl = \"http://127.0.0.1:$PORT/hook\""
  config "$1" "$(printf "$extra")"
  read -r wall _ < <(measure "$WORK/out.txt")
  local summary; summary=$(tail -n 1 "$WORK/out.txt")
  exec 7>&-
  wait "$receiver"
  local sent received
  sent=$(json sent "$summary"); received=$(awk '/^received/ {print $2}' "$out")
  [[ $sent == "$received" ]] || echo "bench: webhook sent=$sent but the receiver got $received" >&2
  echo "$sent / $wall" | bc
}

echo "scenario: $SCENARIO"
printf '%-10s %9s %9s %8s %8s %10s %7s %11s %6s %10s\n' backend accounts eligible first_s deliv/s resweep_s rss_mb bare_sql_s ratio webhook/s
for n in "${SIZES[@]}"; do
  for backend in "${BACKENDS[@]}"; do
    if [[ $backend == sqlite ]]; then
      rm -f "$WORK"/bench.db*; target=$WORK/bench.db; url="sqlite://$target?mode=rwc"
    else
      admin=$PG_ADMIN; [[ $backend == pg-durable ]] && admin=$DURABLE_ADMIN
      name="bench_$n"; psql -q "$admin" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name" 2>/dev/null
      url="${admin%/*}/$name"; target=$url
    fi
    config "$url"
    "$BIN" -c "$WORK/config.toml" migrate >/dev/null
    if [[ $backend == sqlite ]]; then sqlite_load "$target" "$n"; else pg_load "$target" "$n"; fi
    extra_sql=""
    [[ $SCENARIO == quiet10 ]] && extra_sql=$QUIET_SQL
    [[ $SCENARIO == currency10 ]] && extra_sql=$CURRENCY_SQL
    if [[ -n $extra_sql ]]; then
      if [[ $backend == sqlite ]]; then sqlite3 "$target" "$extra_sql; VACUUM;"
      else psql -q "$target" -c "$extra_sql" -c "CHECKPOINT" -c "VACUUM ANALYZE accounts" -c "CHECKPOINT"; fi
    fi
    # Background work after a bulk load (checkpoints, the kernel writing the loaded pages
    # back to disk) would be measured too.
    if [[ $backend != sqlite ]]; then psql -q "$target" -c "CHECKPOINT"; fi
    sync; sleep 1
    # RUNS rounds on the same accounts, each from an empty alert_logs: the medians go in the
    # table, every run's value in the log lines below it.
    firsts=(); resweeps=(); bases=(); peak=0
    for ((run = 1; run <= RUNS; run++)); do
      if ((run > 1)) || [[ $SCENARIO == history30 ]]; then reset_alerts "$backend" "$target"; sync; sleep 1; fi
      read -r wall1 rss1 < <(measure)
      sent=$(count_sent "$backend" "$target")
      read -r wall2 rss2 < <(measure)
      firsts+=("$wall1"); resweeps+=("$wall2")
      peak=$(printf '%s\n' "$peak" "$rss1" "$rss2" | sort -g | tail -n 1)
    done
    for ((run = 1; run <= RUNS; run++)); do
      reset_alerts "$backend" "$target"; bases+=("$(baseline "$backend" "$target")")
    done
    reset_alerts "$backend" "$target"; hook=$(webhook "$url")
    wall1=$(median "${firsts[@]}"); wall2=$(median "${resweeps[@]}"); base=$(median "${bases[@]}")
    printf '%-10s %9s %9s %8s %8s %10s %7s %11.2f %6.2f %10s\n' "$backend" "$n" "$sent" "$wall1" \
      "$(echo "$sent / $wall1" | bc)" "$wall2" "$peak" "$base" "$(echo "$wall1 / $base" | bc -l)" "$hook"
    RUN_LINES+=("$backend $n: first $(printf '%.2f ' "${firsts[@]}")| re-sweep $(printf '%.2f ' "${resweeps[@]}")| bare SQL $(printf '%.2f ' "${bases[@]}")")
    if [[ $n == "${SIZES[-1]}" ]]; then
      # Idle means no sweep: the default schedule (every 5 minutes) could fire inside the
      # 2-second window and measure a re-sweep's memory instead (36 MB once, at 23:35:00).
      config "$url" "$(printf '[schedule]\ncron = "0 0 0 1 1 *"')"
      read -r ready idle < <(python3 scripts/bench_ready.py "$BIN" "$WORK/config.toml")
      READY_LINES+=("$backend: start-up to READY=1 ${ready} ms, idle RSS ${idle} MB (${n} accounts)")
    fi
    rm -rf "$WORK/logs"
  done
done
printf '%s\n' "${READY_LINES[@]}"
echo "each run (seconds; the table shows the medians of $RUNS):"
printf '  %s\n' "${RUN_LINES[@]}"
