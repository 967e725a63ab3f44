#!/bin/sh
# Run the whole test suite on a fresh Debian machine with Python 3.11: set-up
# (./setup.sh --test: the test environment .venv-test, which leaves the quick
# start's .venv alone) first, then pytest over tests/ and plugins/*/tests/
# (pyproject.toml's testpaths) with .venv-test's Python.
# Arguments go to pytest (./test.sh -k framing).
set -eu
cd "$(dirname "$0")"
./setup.sh --test
exec .venv-test/bin/python -m pytest "$@"
