#!/usr/bin/env bash
# The whole test suite, SQLite and PostgreSQL, on a fresh machine:
#   scripts/test.sh [extra cargo test args]
#
# Uses $BALANCE_ALERT_TEST_PG_URL when set (a server where the tests may create databases);
# otherwise starts a throwaway PostgreSQL (scripts/pg.sh) and stops it afterwards. When no
# PostgreSQL can be found the PostgreSQL tests are skipped with a loud warning, and under
# CI=true that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${BALANCE_ALERT_TEST_PG_URL:-}" ]]; then
  if pg_env=$(scripts/pg.sh start); then
    eval "$pg_env"
    trap 'scripts/pg.sh stop "$PG_TEST_ROOT"' EXIT
    echo "test.sh: started a throwaway PostgreSQL at $BALANCE_ALERT_TEST_PG_URL"
  else
    echo "################################################################################" >&2
    echo "# test.sh: NO POSTGRESQL: the PostgreSQL half of the suite will be SKIPPED.     #" >&2
    echo "# Install the server (apt-get install postgresql) or set BALANCE_ALERT_TEST_PG_URL." >&2
    echo "################################################################################" >&2
    if [[ "${CI:-}" == "true" ]]; then
      echo "test.sh: CI=true and no PostgreSQL: failing." >&2
      exit 1
    fi
  fi
fi

# The e-mail tests run a real SMTP server (aiosmtpd) on loopback.
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
  echo "test.sh: installing aiosmtpd (PyPI) for the SMTP tests" >&2
  python3 -m pip install --quiet --root-user-action=ignore aiosmtpd
fi

# promtool checks the live /metrics page and the shipped alerting rules.
if [[ -z "${PROMTOOL:-}" ]]; then
  if PROMTOOL=$(scripts/promtool.sh); then export PROMTOOL
  else
    echo "test.sh: NO PROMTOOL: the promtool checks will be SKIPPED." >&2
    if [[ "${CI:-}" == "true" ]]; then echo "test.sh: CI=true and no promtool: failing." >&2; exit 1; fi
  fi
fi

cargo test --workspace --locked "$@"
