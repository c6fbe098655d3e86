#!/usr/bin/env bash
# Checks systemd/balance-alertd.service with `systemd-analyze verify`.
# verify insists that ExecStart's binary exists: as root (CI) the freshly built binary is
# installed at /usr/bin/balance-alertd for the check and removed afterwards unless it was
# already there; otherwise a copy of the unit pointing at target/ is verified instead.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "verify-unit.sh: systemd-analyze not found" >&2; exit 1; }
cargo build --locked -q
unit=systemd/balance-alertd.service
if [[ -x /usr/bin/balance-alertd ]]; then
  systemd-analyze verify "$unit"
elif [[ $(id -u) -eq 0 ]]; then
  install -m 0755 target/debug/balance-alertd /usr/bin/balance-alertd
  trap 'rm -f /usr/bin/balance-alertd' EXIT
  systemd-analyze verify "$unit"
else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  sed "s#/usr/bin/balance-alertd#$PWD/target/debug/balance-alertd#" "$unit" >"$tmp/balance-alertd.service"
  systemd-analyze verify "$tmp/balance-alertd.service"
fi
echo "verify-unit.sh: $unit passes systemd-analyze verify"
