#!/usr/bin/env bash
# Checks systemd/balance-alertd.service with `systemd-analyze verify`.
# verify insists that every Exec* binary exists: a copy of the unit pointing at the freshly
# built binary is verified, so nothing is installed on the machine running the check (the
# installed unit is verified inside a real systemd by scripts/systemd-e2e.sh when present).
# The binary is wherever cargo puts it ($CARGO_TARGET_DIR or target/): cargo metadata knows.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "verify-unit.sh: systemd-analyze not found" >&2; exit 1; }
cargo build --locked -q
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/debug/balance-alertd
[[ -x $bin ]] || { echo "verify-unit.sh: $bin was not built" >&2; exit 1; }
unit=systemd/balance-alertd.service
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/balance-alertd#$bin#g" "$unit" >"$tmp/balance-alertd.service"
systemd-analyze verify "$tmp/balance-alertd.service"
echo "verify-unit.sh: $unit passes systemd-analyze verify (binary: $bin)"
