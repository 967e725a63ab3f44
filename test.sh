#!/bin/sh
# Run the whole test suite on a fresh Debian machine with Python 3.11: set-up
# (./setup.sh --test: the test environment .venv-test, which leaves the quick
# start's .venv alone) first, then pytest over tests/ and plugins/*/tests/
# (pyproject.toml's testpaths) with .venv-test's Python.
# Arguments go to pytest (./test.sh -k framing).
#
# The tests run in parallel, in pytest-xdist workers: two per CPU (at most 8), since most
# integration tests wait on sockets and subprocesses rather than compute
# ($PYTEST_XDIST_AUTO_NUM_WORKERS chooses another count, ./test.sh -n 0 none).
# --dist loadgroup keeps each integration module, and each group of tests
# that share a resource of the machine, in one worker (tests/integration/conftest.py).
set -eu
cd "$(dirname "$0")"
./setup.sh --test
# At most 8: past that, the flood and load tests of many workers at once
# would share one machine's descriptors and loopback.
workers=$((2 * $(nproc)))
[ "$workers" -le 8 ] || workers=8
PYTEST_XDIST_AUTO_NUM_WORKERS=${PYTEST_XDIST_AUTO_NUM_WORKERS:-$workers}
export PYTEST_XDIST_AUTO_NUM_WORKERS
exec .venv-test/bin/python -m pytest -n auto --dist loadgroup "$@"
