#!/usr/bin/env bash
# End to end under a real systemd (SPEC §8): boots a throwaway container (systemd-nspawn over
# an overlay of this machine's root, all changes in a tmpfs; recipe: PITFALLS "A real
# systemd"), installs the .deb (cargo-deb) as systemd/README.md says, and drives it as an
# operator would: install, alert, journal priorities, reload (valid and invalid), a root
# operator's sweep, restart, kill -9, metrics and readiness, stop, remove. Needs root
# (installs systemd-container and cargo-deb when missing). Always tears the container down.
#
#   scripts/systemd-e2e.sh            packages the debug binary cargo builds
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "systemd-e2e.sh: needs root (mounts, nspawn)" >&2; exit 1; }
if ! command -v systemd-nspawn >/dev/null; then
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container >/dev/null
fi
for tool in sqlite3 curl; do
  command -v $tool >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null
done
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked -q
cargo build --locked -q

started=$(date +%s)
T=$(mktemp -d /tmp/balance-alert-e2e-t.XXXXXX) R=$(mktemp -d /tmp/balance-alert-e2e-root.XXXXXX)
NSPAWN=
teardown() {
  if [[ -n $NSPAWN ]] && kill -0 "$NSPAWN" 2>/dev/null; then
    PID1=$(ps --ppid "$NSPAWN" -o pid=,comm= | awk '$2 == "systemd" {print $1}' || true)
    [[ -n $PID1 ]] && nsenter -t "$PID1" -a systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$NSPAWN" 2>/dev/null || true
  fi
  umount "$R" 2>/dev/null || umount -l "$R" 2>/dev/null || true
  umount "$T" 2>/dev/null || umount -l "$T" 2>/dev/null || true
  rmdir "$R" "$T" 2>/dev/null || true
}
trap teardown EXIT
mount -t tmpfs tmpfs "$T" && mkdir -p "$T/upper" "$T/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$R"
# This machine's image was built with Docker, whose policy-rc.d (exit 101) forbids package
# scripts to start services: a real host has none, so the container gets none (overlay only).
rm -f "$R/usr/sbin/policy-rc.d"
for u in postgresql.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done

# The package, as systemd/README.md installs it: `cargo deb` from the debug binary just built
# (the tests' build; releases use the release profile), into the container's /root.
cargo deb --profile dev --no-build -o "$R/root/" 2>&1 | grep -v -e "dev profile is not supported" -e "To enable debug symbols" || true
ls "$R"/root/balance-alertd_*.deb >/dev/null || { echo "systemd-e2e.sh: cargo deb made no package" >&2; exit 1; }

systemd-nspawn -D "$R" --private-network --register=no --keep-unit --link-journal=no --boot \
  >"$T/nspawn.log" 2>&1 &
NSPAWN=$!
# nspawn forks a helper before the container's PID 1 (systemd) exists: wait for that one.
PID1=
for _ in $(seq 100); do
  PID1=$(ps --ppid "$NSPAWN" -o pid=,comm= | awk '$2 == "systemd" {print $1}' || true)
  [[ -n $PID1 ]] && nsenter -t "$PID1" -a true 2>/dev/null && break
  PID1=; sleep 0.2
done
[[ -n ${PID1:-} ]] || { echo "systemd-e2e.sh: the container did not boot" >&2; cat "$T/nspawn.log" >&2; exit 1; }
inside() { nsenter -t "$PID1" -a "$@"; }
# Until its bus is up, systemctl cannot even ask: retry until it answers with a state.
state=
for _ in $(seq 60); do
  state=$(inside systemctl is-system-running --wait 2>/dev/null || true)
  [[ -n $state ]] && break
  sleep 0.5
done
[[ -n $state ]] || { echo "systemd-e2e.sh: the container's systemd did not come up" >&2; exit 1; }
echo "systemd-e2e.sh: container booted ($state)"

inside bash -s <<'CHECKS'
set -euo pipefail
fail() { echo "E2E FAILED: $*" >&2; journalctl -u balance-alertd --no-pager | tail -n 30 >&2; exit 1; }
step() { echo "--- $*"; }
wait_for() { # seconds command...
  local n=$(( $1 * 5 )); shift
  for _ in $(seq "$n"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.2; done
  return 1
}

step "apt install ./balance-alertd_*.deb: user created, unit enabled and started"
cd /root && apt-get install -y -qq ./balance-alertd_*.deb >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt install"; }
id balance-alert >/dev/null || fail "no balance-alert user"
[[ $(stat -c %G /etc/balance-alert/config.toml) == balance-alert ]] || fail "config.toml not in the service's group"
systemctl is-enabled balance-alertd >/dev/null || fail "unit not enabled"
wait_for 10 bash -c '[[ $(systemctl is-active balance-alertd) == active ]]' || fail "not active after install"
step "systemd-analyze verify (inside, on the installed unit)"
systemd-analyze verify /usr/lib/systemd/system/balance-alertd.service || fail "systemd-analyze verify"
step "an operator sets a sweep every 2 s and reloads"
sed -i 's#^cron = .*#cron = "*/2 * * * * *"#' /etc/balance-alert/config.toml
systemctl reload balance-alertd || fail "reload of the schedule"

step "a low account is alerted and audited; a bad address fails at priority warning"
db=/var/lib/balance-alert/balance-alert.db
wait_for 10 test -f $db || fail "no database"
sqlite3 $db "INSERT INTO accounts (id, owner_email, owner_name, balance_minor) VALUES \
  ('11111111-1111-4111-8111-111111111111', 'low@example.com', 'Low', 100), \
  ('22222222-2222-4222-8222-222222222222', 'not-an-address', 'Bad', 100)"
wait_for 10 bash -c "grep -q '\"event\":\"alert_sent\".*low@example.com' /var/log/balance-alert/audit.log" \
  || fail "no alert_sent line for low@example.com in /var/log/balance-alert/audit.log"
journalctl -u balance-alertd --no-pager | grep -q "Email -> low@example.com" || fail "no console delivery in the journal"
wait_for 5 bash -c "journalctl -u balance-alertd -p warning --no-pager | grep -q 'Alert delivery failed'" \
  || fail "journalctl -p warning does not show the failed delivery"
journalctl -u balance-alertd -p warning --no-pager | grep -q "Sweep finished" && fail "an INFO line at priority warning"

step "reload: invalid -> non-zero and the old settings stay; valid -> applied"
cp /etc/balance-alert/config.toml /tmp/good.toml
sed -i 's/^threshold = .*/threshold = "abc"/' /etc/balance-alert/config.toml
if systemctl reload balance-alertd; then fail "systemctl reload succeeded on threshold = \"abc\""; fi
[[ $(systemctl is-active balance-alertd) == active ]] || fail "not active after a rejected reload"
cp /tmp/good.toml /etc/balance-alert/config.toml
sed -i 's/^threshold = .*/threshold = "20.00"/' /etc/balance-alert/config.toml
systemctl reload balance-alertd || fail "systemctl reload failed on a valid change"
wait_for 5 bash -c "journalctl -u balance-alertd --no-pager | grep -q 'Configuration reloaded. threshold=20.00'" \
  || fail "the valid reload was not applied"

step "metrics and readiness from inside"
curl -sf 127.0.0.1:9464/readyz | grep -q ready || fail "/readyz"
curl -sf 127.0.0.1:9464/healthz | grep -q ok || fail "/healthz"
metrics=$(curl -sf 127.0.0.1:9464/metrics) || fail "/metrics"
grep -q 'balance_alertd_deliveries_total{channel="console",outcome="sent"} 1' <<<"$metrics" || fail "sent counter: $metrics"
grep -q 'balance_alertd_config_last_reload_successful 1' <<<"$metrics" || fail "reload gauge"

step "an operator's sweep as root is refused and leaves nothing behind; restart still works"
if balance-alertd --config /etc/balance-alert/config.toml sweep 2>/tmp/root.err; then fail "root sweep ran"; fi
grep -q "sudo -u balance-alert" /tmp/root.err || fail "the refusal does not name the command: $(cat /tmp/root.err)"
find /var/log/balance-alert /var/lib/balance-alert -user root | grep . && fail "root-owned files left behind"
systemctl restart balance-alertd || fail "restart after the operator's command"
[[ $(systemctl is-active balance-alertd) == active ]] || fail "not active after restart"

step "kill -9 -> restarted"
pid=$(systemctl show -p MainPID --value balance-alertd)
systemctl kill -s KILL balance-alertd
wait_for 15 bash -c "[[ \$(systemctl show -p MainPID --value balance-alertd) != $pid && \$(systemctl is-active balance-alertd) == active ]]" \
  || fail "not restarted after kill -9"

step "stop -> exit 0 within the grace"
start=$(date +%s)
systemctl stop balance-alertd
(( $(date +%s) - start <= 36 )) || fail "stop took longer than shutdown.grace + 6 s"
[[ $(systemctl show -p Result --value balance-alertd) == success ]] || fail "stop result: $(systemctl show -p Result --value balance-alertd)"
step "apt remove: the service is stopped, the configuration kept"
systemctl start balance-alertd
apt-get remove -y -qq balance-alertd >/tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt remove"; }
[[ $(systemctl is-active balance-alertd) != active ]] || fail "still running after apt remove"
[[ ! -e /usr/bin/balance-alertd ]] || fail "binary left after remove"
[[ -e /etc/balance-alert/config.toml ]] || fail "conffile removed by remove (only purge may)"
echo "all checks passed"
CHECKS
echo "systemd-e2e.sh: passed in $(( $(date +%s) - started )) s"
