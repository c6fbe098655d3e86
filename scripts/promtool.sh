#!/usr/bin/env bash
# Prints the path of a `promtool` (Prometheus' checker for metrics pages and rule files):
# one on PATH, else Debian's `prometheus` package unpacked under /tmp (dpkg-deb -x: nothing
# is installed, no server runs). Exits 1 when none can be had.
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
dir=/tmp/balance-alert-promtool
if [[ ! -x $dir/usr/bin/promtool ]]; then
  work=$(mktemp -d /tmp/balance-alert-promtool-dl.XXXXXX); trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    (cd "$work" && apt-get download prometheus >/dev/null 2>&1) \
      || { echo "promtool.sh: cannot download Debian's prometheus package" >&2; exit 1; }
  fi
  mkdir -p "$dir" && dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  install -D -m 0755 "$work/root/usr/bin/promtool" "$dir/usr/bin/promtool"
fi
echo "$dir/usr/bin/promtool"
