#!/usr/bin/env bash
# Interleaved A/B of whole sweeps: the binaries take turns, round after round, each on a
# fresh copy of its own database, so that this shared machine's drift (README
# "Performance") hits every binary alike. Prints each run (wall, user and system seconds of
# the sweep, CPU seconds of the whole machine meanwhile) and the median wall time per binary.
#
#   scripts/ab.sh ROUNDS NAME=BINARY:DATABASE [NAME=BINARY:DATABASE ...]
#
# Each DATABASE is a SQLite file with accounts loaded and an empty alert_logs, already
# migrated for its BINARY (`BINARY -c CONFIG migrate up` on a copy): e.g. the file
# scripts/bench.sh leaves, loaded once under the older binary's schema and copied. Or a
# PostgreSQL URL (postgres://...) of a database migrated for its BINARY: before each run its
# alert_logs is emptied and both tables vacuumed, analysed and checkpointed.
#
# AB_WRITE_EVERY=0.005: while each sweep runs, another process updates the balance of a
# random account above 50.00 every that many seconds (SQLite only), as a bank's systems
# write accounts during a sweep: the claims then find their read-ahead pages changed.
set -euo pipefail
if (($# < 2)); then
  sed -n '2,17p' "$0" >&2
  exit 2
fi
WRITE_EVERY=${AB_WRITE_EVERY:-}
ROUNDS=$1
shift
WORK=$(mktemp -d /tmp/ab.XXXXXX)
writer=
trap 'if [[ -n $writer ]]; then kill "$writer" 2>/dev/null || true; fi; rm -rf "$WORK"' EXIT
declare -A walls
# CPU seconds the whole machine spent busy (user, nice, system, irq, softirq) since boot: a
# PostgreSQL server's work is not in the sweep's own user and system time.
machine_busy() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8) / hz}' /proc/stat
}
for ((round = 1; round <= ROUNDS; round++)); do
  for spec in "$@"; do
    name=${spec%%=*}
    rest=${spec#*=}
    bin=${rest%%:*}
    master=${rest#*:}
    rm -rf "$WORK"/db* "$WORK"/logs
    if [[ $master == postgres://* ]]; then
      psql -q -v ON_ERROR_STOP=1 "$master" -c "TRUNCATE alert_logs" -c "VACUUM ANALYZE" \
        -c "CHECKPOINT"
      url=$master
    else
      cp "$master" "$WORK/db"
      url="sqlite://$WORK/db?mode=rwc"
    fi
    printf '[database]\nurl = "%s"\n[log]\ndir = "%s/logs"\n' "$url" "$WORK" >"$WORK/config.toml"
    sync
    sleep 1
    writer=
    if [[ -n $WRITE_EVERY && $master != postgres://* ]]; then
      python3 - "$WORK/db" "$WRITE_EVERY" <<'PY' &
import random, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
(last,) = db.execute("SELECT max(rowid) FROM accounts").fetchone()
while True:
    db.execute("UPDATE accounts SET balance_minor = balance_minor + 1 "
               "WHERE rowid = ? AND balance_minor >= 5000", (random.randint(1, last),))
    time.sleep(float(sys.argv[2]))
PY
      writer=$!
      sleep 0.5
    fi
    busy_before=$(machine_busy)
    if ! /usr/bin/time -f "%e %U %S" -o "$WORK/time" "$bin" -c "$WORK/config.toml" sweep --json \
      >/dev/null 2>"$WORK/stderr"; then
      echo "round $round $name: the sweep failed" >&2
      tail -3 "$WORK/stderr" >&2
      exit 1
    fi
    busy=$(echo "$(machine_busy) - $busy_before" | bc)
    writes=
    if [[ -n $writer ]]; then
      kill "$writer"
      wait "$writer" 2>/dev/null || true
      writer=
      writes=" accounts written $(sqlite3 "$WORK/db" "SELECT changes FROM accounts_changes" 2>/dev/null || echo '?')"
    fi
    read -r wall user sys <"$WORK/time"
    echo "round $round $name wall ${wall}s user ${user}s sys ${sys}s machine CPU ${busy}s$writes"
    walls[$name]+="$wall "
  done
done
median() {
  sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
first=${1%%=*}
for spec in "$@"; do
  name=${spec%%=*}
  # shellcheck disable=SC2086 # one number per word
  line="$name: ${walls[$name]}median $(printf '%s\n' ${walls[$name]} | median)s"
  if [[ $name != "$first" ]]; then
    # Each round's ratio to the first binary's run of the same round, which ran minutes
    # apart at most: steadier than the ratio of the medians when the machine drifts.
    # shellcheck disable=SC2086
    ratio=$(paste -d' ' <(printf '%s\n' ${walls[$name]}) <(printf '%s\n' ${walls[$first]}) |
      awk '{printf "%.3f\n", $1 / $2}' | median)
    line+=", median of per-round ratios to $first $ratio"
  fi
  echo "$line"
done
