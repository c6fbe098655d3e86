#!/usr/bin/env bash
# Slow receivers (README "Sizing notify.concurrency"): how long a first sweep of ALERTS
# deliveries takes when each delivery waits LATENCY for its receiver, per channel and
# notify.concurrency. The database is SQLite; the receivers are real servers on loopback:
# examples/bench_receiver.rs for webhook and sms (Twilio-compatible path), tests/smtp_server.py
# (aiosmtpd) for email.
#
#   scripts/bench-latency.sh                  ALERTS=2000, latencies 50 100 500 ms,
#   ALERTS=1000 CONCURRENCY="32 256" scripts/bench-latency.sh   concurrency 32 256
set -euo pipefail
cd "$(dirname "$0")/.."
ALERTS=${ALERTS:-2000}
LATENCIES=(${LATENCIES:-50 100 500})
CONCURRENCY=(${CONCURRENCY:-32 256})
CHANNELS=(${CHANNELS:-webhook sms email})
PORT=${BENCH_RECEIVER_PORT:-18090}

cargo build --release --locked -q
cargo build --release --locked -q --example bench_receiver
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN=$TARGET_DIR/release/balance-alertd
RECEIVER=$TARGET_DIR/release/examples/bench_receiver
WORK=$(mktemp -d /tmp/balance-alert-latency.XXXXXX)
SERVER_PID=""
cleanup() {
  if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

channel_toml() { # channel concurrency
  case $1 in
    webhook) printf '[notify]\nchannels = ["webhook"]\nconcurrency = %s\n[notify.webhook]\nurl = "http://127.0.0.1:%s/hook"\n' "$2" "$PORT" ;;
    sms) printf '[notify]\nchannels = ["sms"]\nconcurrency = %s\n[notify.sms]\napi_url = "http://127.0.0.1:%s"\naccount_sid = "AC1"\nauth_token = "t"\nfrom = "+15005550006"\n' "$2" "$PORT" ;;
    email) printf '[notify]\nchannels = ["email"]\nconcurrency = %s\n[notify.email]\nsmtp_url = "smtp://127.0.0.1:%s"\n' "$2" "$PORT" ;;
  esac
}

start_receiver() { # channel latency_ms
  if [[ $1 == email ]]; then
    SMTP_DELAY_MS=$2 python3 tests/smtp_server.py "$PORT" "$WORK/mail.jsonl" >"$WORK/server.out" &
    SERVER_PID=$!
  else
    # The receiver runs until its stdin closes: a FIFO this script holds open on fd 8.
    rm -f "$WORK/receiver.in"; mkfifo "$WORK/receiver.in"
    "$RECEIVER" "$PORT" "$2" <"$WORK/receiver.in" >"$WORK/server.out" &
    SERVER_PID=$!
    exec 8>"$WORK/receiver.in"
  fi
  for _ in $(seq 50); do grep -q "ready\|listening" "$WORK/server.out" 2>/dev/null && return; sleep 0.1; done
  echo "bench-latency: the $1 receiver did not start" >&2; exit 1
}

printf '%-8s %10s %12s %8s %10s %12s\n' channel latency_ms concurrency alerts sweep_s deliveries/s
for channel in "${CHANNELS[@]}"; do
  for latency in "${LATENCIES[@]}"; do
    start_receiver "$channel" "$latency"
    for c in "${CONCURRENCY[@]}"; do
      rm -f "$WORK"/bench.db*
      printf '[database]\nurl = "sqlite://%s/bench.db?mode=rwc"\n[log]\ndir = "%s/logs"\nlevel = "warn"\n[delivery]\ntimeout = "10s"\n%s\n' \
        "$WORK" "$WORK" "$(channel_toml "$channel" "$c")" >"$WORK/config.toml"
      "$BIN" -c "$WORK/config.toml" migrate >/dev/null
      sqlite3 "$WORK/bench.db" "WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < $ALERTS)
        INSERT INTO accounts (id, owner_email, owner_name, balance_minor, owner_phone)
        SELECT lower(hex(randomblob(16))), 'owner' || i || '@example.com', 'Owner ' || i, 100, '+1415555' || printf('%04d', i) FROM seq;"
      start=$(date +%s.%N)
      out=$("$BIN" -c "$WORK/config.toml" sweep --json | tail -n 1)
      end=$(date +%s.%N)
      sent=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['sent'])" "$out")
      [[ $sent == "$ALERTS" ]] || echo "bench-latency: $channel sent $sent of $ALERTS" >&2
      wall=$(echo "$end - $start" | bc)
      printf '%-8s %10s %12s %8s %10.2f %12.0f\n' "$channel" "$latency" "$c" "$sent" "$wall" "$(echo "$sent / $wall" | bc -l)"
    done
    if [[ $channel == email ]]; then kill "$SERVER_PID" 2>/dev/null || true; else exec 8>&-; fi
    wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    rm -rf "$WORK/logs" "$WORK/mail.jsonl"
  done
done
