#!/bin/sh
# The pytest-suite benchmark (bench/README.md): a generated suite of echo tests
# run with a netd per test (netd_server) and with one netd for the session and
# a runtime service per test (netd_session + netd_service); wall times and
# their ratio.  Installs the work tree's netd into .venv with ./setup.sh and
# pytest into it when missing, then runs bench/pytest_suite/bench.py with the
# arguments given (--tests N, --rounds N, --record adds the results to
# bench/RESULTS.md).  About two minutes with the defaults (200 tests) on a
# quiet machine, most of it the 200 netd starts of the per-test way;
# everything listens on 127.0.0.1 and every netd is stopped by its PID.
set -eu
cd "$(dirname "$0")/../.."

bench/setup-tools.sh bench/pytest_suite/run.sh
.venv/bin/python -c 'import pytest' 2>/dev/null || .venv/bin/python -m pip install -q --disable-pip-version-check pytest
exec .venv/bin/python bench/pytest_suite/bench.py "$@"
